"""The embedding service's batch queue seen from outside: the batcher's own expiry (counted as
`expired`, apart from `cancelled`), and admission of a multi-text request against a partly
full queue (all texts or none; the depth never above max_queue_size).

The real service, Encoder, batcher and model run; the only addition is a gate in front of the
backend's forward (the test holds the batch that is running, so that "the queue is partly
full" and "the deadline passed while queued" are states the test sets, not a bet on CPU
speed). Metrics carry a model name of this module's own, so other tests' traffic never
shows in the deltas.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.core.config import BatcherConfig
from textserve.core.errors import DeadlineExceeded
from textserve.core.metrics import REGISTRY
from textserve.embedding.app import EmbeddingApp
from textserve.embedding.service import EmbedParams
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, model_config, start_host

MODEL = "queue-test-minilm"
LABELS = {"service": "embedding", "model": MODEL, "version": "1"}
QUEUE_SIZE = 8


class GatedBackend:
    """The real backend, whose forward waits for the test's gate (opened by default)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.rows: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.rows.append(int(input_ids.shape[0]))
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return np.asarray(self.inner.forward(input_ids, attention_mask))


@pytest.fixture(scope="module")
async def gated() -> AsyncIterator[tuple[ServiceHost, EmbeddingApp, GatedBackend]]:
    app = EmbeddingApp(
        embedding_config(
            model=model_config(name=MODEL),
            batcher=BatcherConfig(max_batch_size=4, max_queue_size=QUEUE_SIZE, workers=1),
        )
    )
    host = await start_host([app])
    model = app.service.encoder.model
    assert model is not None
    backend = GatedBackend(model.backend)
    model.backend = backend
    yield host, app, backend
    backend.gate.set()
    await host.stop(grace=1.0)


@pytest.fixture(autouse=True)
def open_gate_after(gated: tuple[ServiceHost, EmbeddingApp, GatedBackend]) -> Iterator[None]:
    """A failed test never leaves the worker held for the next one."""
    yield
    gated[2].gate.set()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {**LABELS, **labels}) or 0.0


async def poll(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Bounded poll of a state another task sets (metrics, events)."""
    stop_at = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < stop_at, "condition not reached"
        await asyncio.sleep(0.01)


async def hold_the_worker(app: EmbeddingApp, backend: GatedBackend) -> asyncio.Task[Any]:
    """Closes the gate and starts one request that occupies the only worker until it opens."""
    backend.gate.clear()
    backend.entered.clear()
    busy = asyncio.create_task(app.service.embed(EmbedParams(texts=[f"busy {time.time()}"], skip_cache=True)))
    await poll(backend.entered.is_set)
    return busy


async def test_the_batcher_itself_drops_an_expired_entry(
    gated: tuple[ServiceHost, EmbeddingApp, GatedBackend],
) -> None:
    """No caller cancels here (an in-process caller, as the classifier under `serve all`): the
    deadline is enforced by the batcher alone, counted as `expired`, and the text never runs."""
    _, app, backend = gated
    expired, cancelled = (
        metric("textserve_batcher_dropped_total", reason="expired"),
        metric("textserve_batcher_dropped_total", reason="cancelled"),
    )
    busy = await hold_the_worker(app, backend)
    rows_before = sum(backend.rows)
    deadline = time.monotonic() + 0.2
    texts = ["late one", "late two"]
    hurried = asyncio.create_task(app.service.embed(EmbedParams(texts=texts, skip_cache=True), deadline))
    await poll(lambda: metric("textserve_queue_depth") == len(texts))
    # Time passing the deadline is the behaviour under test (not synchronisation).
    await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
    assert not hurried.done()  # nobody but the batcher looks at this deadline
    backend.gate.set()
    with pytest.raises(DeadlineExceeded):
        await hurried
    await busy
    assert metric("textserve_batcher_dropped_total", reason="expired") - expired == len(texts)
    assert metric("textserve_batcher_dropped_total", reason="cancelled") - cancelled == 0
    assert sum(backend.rows) == rows_before  # the expired texts were never computed


async def test_a_multi_text_request_meets_a_partly_full_queue(
    gated: tuple[ServiceHost, EmbeddingApp, GatedBackend],
) -> None:
    """5 texts wait; 4 more do not fit in 8 (refused whole, at once); 3 do. The depth never exceeds 8."""
    host, app, backend = gated
    rejected = metric("textserve_batcher_rejected_total")
    depths: list[float] = []
    busy = await hold_the_worker(app, backend)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        def embed(prefix: str, count: int, timeout: float = 120) -> Any:
            texts = [f"{prefix} text {i}" for i in range(count)]
            return stub.Embed(embedding_pb2.EmbedRequest(texts=texts, skip_cache=True), timeout=timeout)

        first = asyncio.ensure_future(embed("first", 5))
        await poll(lambda: metric("textserve_queue_depth") == 5)
        depths.append(metric("textserve_queue_depth"))
        # Refused at admission, at once (were it queued, it would wait for the closed gate).
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embed("too many", 4, timeout=10)
        depths.append(metric("textserve_queue_depth"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (caught.value.code(), depths)
        third = asyncio.ensure_future(embed("fits", 3))
        await poll(lambda: metric("textserve_queue_depth") == QUEUE_SIZE)
        depths.append(metric("textserve_queue_depth"))
        backend.gate.set()
        answers = await asyncio.gather(first, third)
    await busy
    assert "max_queue_size=8" in caught.value.details()
    assert metric("textserve_batcher_rejected_total") - rejected == 4
    assert depths == [5, 5, QUEUE_SIZE]
    assert [len(a.embeddings) for a in answers] == [5, 3]
