"""The one time-left rule of every call to another service (transport/deadlines.time_left)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from textserve.core.errors import DeadlineExceeded
from textserve.transport.deadlines import MIN_TIMEOUT_S, set_current_deadline, time_left

T = TypeVar("T")


def _serving(deadline: float | None, call: Callable[[], T]) -> T:
    """Runs `call` as if inside an RPC whose deadline is `deadline` (a fresh context)."""

    def run() -> T:
        set_current_deadline(deadline)
        return call()

    return contextvars.copy_context().run(run)


def test_no_deadline_gives_the_default_or_none() -> None:
    assert time_left() is None
    assert time_left(None, 7.0) == 7.0


def test_the_requests_deadline_wins_over_the_default() -> None:
    left = time_left(time.monotonic() + 30.0, 5.0)
    assert left is not None and 29.0 < left <= 30.0


def test_the_rpc_being_served_caps_the_deadline_and_the_default() -> None:
    soon = time.monotonic() + 2.0
    by_default = _serving(soon, lambda: time_left(None, 60.0))
    by_deadline = _serving(soon, lambda: time_left(time.monotonic() + 60.0))
    alone = _serving(soon, lambda: time_left())
    for left in (by_default, by_deadline, alone):
        assert left is not None and 1.0 < left <= 2.0
    shorter = _serving(time.monotonic() + 60.0, lambda: time_left(None, 3.0))
    assert shorter == 3.0


def test_a_passed_deadline_is_deadline_exceeded_before_any_call() -> None:
    with pytest.raises(DeadlineExceeded):
        time_left(time.monotonic() - 0.1, 10.0)
    with pytest.raises(DeadlineExceeded):
        _serving(time.monotonic() - 0.1, lambda: time_left(None, 10.0))


def test_never_below_the_least_timeout() -> None:
    assert time_left(time.monotonic() + MIN_TIMEOUT_S / 100) == MIN_TIMEOUT_S
