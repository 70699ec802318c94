"""The forward gate of model versions (lifecycle/gate.py): primary batches before shadow ones."""

from __future__ import annotations

import threading

import pytest
from textserve.lifecycle.gate import ForwardGate

from tests.support import wait_until


async def test_a_waiting_primary_forward_goes_before_a_waiting_shadow_forward() -> None:
    gate = ForwardGate(capacity=1)
    order: list[str] = []
    gate.acquire(background=False)  # a primary forward is running

    def forward(name: str, background: bool) -> None:
        gate.acquire(background)
        order.append(name)
        gate.release()

    shadow = threading.Thread(target=forward, args=("shadow", True))
    shadow.start()
    primary = threading.Thread(target=forward, args=("primary", False))
    primary.start()
    await wait_until(lambda: gate._primary_waiting == 1)
    gate.release()
    primary.join(10)
    shadow.join(10)
    assert order == ["primary", "shadow"]


def test_wrap_runs_the_batch_and_frees_the_gate_on_failure() -> None:
    gate = ForwardGate(capacity=1)
    doubled = gate.wrap(lambda items: [i * 2 for i in items], lambda: False)
    assert doubled([1, 2]) == [2, 4]

    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    failing = gate.wrap(boom, lambda: True)
    with pytest.raises(RuntimeError, match="boom"):
        failing([1])
    assert gate._running == 0
    assert doubled([3]) == [6]
