"""The deadline of the RPC being served, handed on to the calls it makes to other services.

A server interceptor (core/interceptors.py) records each incoming RPC's absolute deadline
(time.monotonic()) in a context variable; the client channels of core/channels.py read it,
so a call to another textserve service never gets more time than the original caller has
left. Tasks an RPC spawns inherit the variable (asyncio copies the context).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

MIN_TIMEOUT_S = 0.001
"""Timeout given to an outgoing call whose caller's deadline has already passed (it fails at once)."""

_DEADLINE: ContextVar[float | None] = ContextVar("textserve_rpc_deadline", default=None)


def set_current_deadline(deadline: float | None) -> None:
    """Records the absolute time.monotonic() deadline of the RPC this task serves."""
    _DEADLINE.set(deadline)


def current_deadline() -> float | None:
    """Absolute deadline of the RPC being served, or None (no deadline, or not in an RPC)."""
    return _DEADLINE.get()


def outgoing_timeout(explicit: float | None, default: float | None) -> float | None:
    """Timeout for a call to another service: the explicit (or default) timeout, capped by what
    the incoming RPC has left; never below MIN_TIMEOUT_S, so an expired caller fails at once."""
    timeout = explicit if explicit is not None else default
    deadline = current_deadline()
    if deadline is not None:
        left = deadline - time.monotonic()
        timeout = left if timeout is None else min(timeout, left)
    if timeout is None:
        return None
    return max(timeout, MIN_TIMEOUT_S)
