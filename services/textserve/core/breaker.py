"""Circuit breaker with exponential backoff, for a dependency the service can live without.

Closed: every call goes through. After `threshold` consecutive failures it opens: calls
are refused at once (no I/O, no connect timeout paid) until the retry time; then one call
is let through as a probe (half-open). A successful probe closes it; a failed probe opens
it again with the wait doubled, up to `max_s`, with jitter so replicas do not retry in
lockstep. Plain synchronous state: no asyncio, no I/O; the clock is injectable for tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Decides whether a call to the dependency may be attempted now."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        *,
        threshold: int = 1,
        jitter: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.threshold = threshold
        self.jitter = jitter
        self._clock = clock
        self._rng = rng
        self.failures = 0
        """Consecutive failed calls."""
        self.opened = 0
        """Times the breaker opened since it was last closed (sets the backoff)."""
        self._retry_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        """closed, open (refusing until the retry time) or half_open (a probe may go or is going)."""
        if self.failures < self.threshold:
            return "closed"
        return "half_open" if self._probing or self._clock() >= self._retry_at else "open"

    @property
    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed or due)."""
        if self.failures < self.threshold:
            return 0.0
        return max(0.0, self._retry_at - self._clock())

    def allow(self) -> bool:
        """True when a call may go now; in half_open only one caller (the probe) gets True."""
        if self.failures < self.threshold:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        """The call reached the dependency and got an answer: close."""
        self.failures = 0
        self.opened = 0
        self._probing = False

    def failure(self) -> float:
        """The call failed; returns the wait before the next attempt (0 while still closed).

        Only the failure that opens the breaker and failed probes set a new (longer) wait:
        calls already in flight when it opened fail too, and must not stretch the backoff.
        """
        was_open = self.failures >= self.threshold
        self.failures += 1
        if was_open and not self._probing:
            return self.retry_in
        self._probing = False
        if self.failures < self.threshold:
            return 0.0
        wait = min(self.max_s, self.min_s * 2.0**self.opened)
        wait *= 1.0 - self.jitter * self._rng()
        self.opened += 1
        self._retry_at = self._clock() + wait
        return wait

    def release(self) -> None:
        """The call ended without telling whether the dependency works (e.g. it was cancelled)."""
        self._probing = False
