"""The deadline of the RPC being served, handed on to the calls it makes to other services.

A server interceptor (transport/interceptors.py) records each incoming RPC's absolute
deadline (time.monotonic()) in a context variable; `time_left`, which every call to another
service takes its timeout from (textserve/client/), reads it, so such a call never gets
more time than the original caller has left. Tasks an RPC spawns inherit the variable
(asyncio copies the context).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from textserve.core.errors import DeadlineExceeded

MIN_TIMEOUT_S = 0.001
"""Least timeout of a call to another service (a call with less left than this still gets it)."""

_DEADLINE: ContextVar[float | None] = ContextVar("textserve_rpc_deadline", default=None)


def set_current_deadline(deadline: float | None) -> None:
    """Records the absolute time.monotonic() deadline of the RPC this task serves."""
    _DEADLINE.set(deadline)


def current_deadline() -> float | None:
    """Absolute deadline of the RPC being served, or None (no deadline, or not in an RPC)."""
    return _DEADLINE.get()


def time_left(deadline: float | None = None, default_s: float | None = None) -> float | None:
    """Seconds a call to another service may take: the one rule every such call follows.

    What is left of `deadline` (absolute time.monotonic(): the request being served, the
    gateway's HTTP deadline), else `default_s` (a relative timeout; None: no timeout), capped
    by what the RPC being served has left (`current_deadline`), and never below
    MIN_TIMEOUT_S. Raises DeadlineExceeded when a deadline has already passed: the call is
    not made, so work nobody waits for is not computed.
    """
    now = time.monotonic()
    timeout = deadline - now if deadline is not None else default_s
    inherited = current_deadline()
    if inherited is not None:
        timeout = inherited - now if timeout is None else min(timeout, inherited - now)
    if timeout is None:
        return None
    if timeout <= 0:
        raise DeadlineExceeded("deadline passed before the call to another service; not computed")
    return max(timeout, MIN_TIMEOUT_S)
