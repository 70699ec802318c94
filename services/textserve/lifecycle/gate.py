"""One forward at a time across the versions of a model, primary work first.

Versions of one model share the machine: two versions' forwards at once on a CPU each want
every core and slow each other down far more than running one after the other. The versions
of a service with a model repository pass their batches through one `ForwardGate` (as many at
once as the batcher has workers). A background (shadow) forward waits while any primary
forward waits or runs, so the shadow uses what the primary leaves idle; a primary forward
waits at most for forwards already running. Forwards run in the batchers' worker threads,
hence a threading condition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class ForwardGate:
    """Admits `capacity` forwards at once; background ones only when no primary one waits."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._running = 0
        self._primary_waiting = 0
        self._condition = threading.Condition()

    def acquire(self, background: bool) -> None:
        with self._condition:
            if background:
                self._condition.wait_for(lambda: self._running < self.capacity and not self._primary_waiting)
            else:
                self._primary_waiting += 1
                try:
                    self._condition.wait_for(lambda: self._running < self.capacity)
                finally:
                    self._primary_waiting -= 1
            self._running += 1

    def release(self) -> None:
        with self._condition:
            self._running -= 1
            self._condition.notify_all()

    def wrap(
        self, run_batch: Callable[[list[In]], Sequence[Out]], background: Callable[[], bool]
    ) -> Callable[[list[In]], Sequence[Out]]:
        """`run_batch` passing through the gate; `background()` says, per batch, whether it is shadow work."""

        def gated(items: list[In]) -> Sequence[Out]:
            self.acquire(background())
            try:
                return run_batch(items)
            finally:
                self.release()

        return gated
