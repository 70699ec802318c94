"""The async front of the generation engine: submit a sequence, get its events as an async stream.

`EngineFront` is what the service talks to, wherever the engine runs: `generate` submits one
sequence and yields its events until the one that finishes it (`generate_many` does the same
for the n sequences of one request). Events are routed, on the event loop, to the queue of
the sequence they belong to; a refusal of the engine (Overloaded, NotReady) or its failure
reaches the caller as an exception from the stream. A caller that leaves early (its task is
cancelled, or it closes the stream) aborts the sequence, which frees its batch slot and KV
reservation at the engine's next step.

`AsyncEngine` runs the engine in a worker thread of this process: the engine reports each
step's events in one call from its thread and they are moved onto the loop. Simple, and what
tests that look inside the engine use; but the thread shares the interpreter lock with the
event loop, so every streamed message's Python work (gRPC, protobuf, asyncio) delays the
next engine step. `generation/engine_process.py` runs the same engine in a process of its own.

It knows nothing of requests' validation, tokenization or the cache (generation/service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncGenerator, Sequence

from textserve.generation.engine import (
    EngineMetrics,
    EngineRequest,
    EventSink,
    GenerationEngine,
    SequenceEvent,
)
from textserve.generation.prefix_cache import PrefixCache
from textserve.generation.scheduler import Scheduler, SchedulerLimits
from textserve.runtime.causal_lm import CausalLM

# While streams run, a step prefills at most what takes this share of a decode step (the
# engine's `prefill_time_share`): the inter-token gap of a running stream at most doubles
# while new prompts join.
PREFILL_TIME_SHARE = 1.0

StreamItem = list[SequenceEvent] | BaseException
"""What a sequence's queue holds: events, or the error that ends its stream."""


def build_engine(
    model: CausalLM,
    limits: SchedulerLimits,
    on_events: EventSink,
    *,
    service: str,
    max_batched_tokens: int = 128,
    prefix_cache: PrefixCache | None = None,
    prefill_time_share: float | None = PREFILL_TIME_SHARE,
    metrics: EngineMetrics | None = None,
) -> GenerationEngine:
    """The GenerationEngine of a loaded model (in this thread's process, whichever that is)."""
    info = model.info
    pad = model.tokenizer.pad_token_id
    return GenerationEngine(
        model.model,
        model.tokenizer,
        model.device,
        info.vocab_size,
        Scheduler(limits),
        on_events,
        service=service,
        model_name=info.name,
        eos_token_ids=info.eos_token_ids,
        pad_token_id=int(pad) if pad is not None else 0,
        max_batched_tokens=max_batched_tokens,
        prefix_cache=prefix_cache,
        prefill_time_share=prefill_time_share,
        metrics=metrics,
    )


class EngineFront:
    """Streams of sequence events over an engine that runs elsewhere (a thread, a process)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[StreamItem]] = {}

    # --- what the engine's host provides -------------------------------------------------
    async def start(self) -> None:
        """Starts the engine (warmed up: a model it cannot batch fails here)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Ends every sequence (ABORTED) and stops the engine."""
        raise NotImplementedError

    def _submit(self, requests: Sequence[EngineRequest]) -> None:
        """Hands sequences to the engine (all or none); may raise Overloaded or NotReady."""
        raise NotImplementedError

    def _abort(self, seq_id: int) -> None:
        """Ends a sequence whose caller left."""
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        """False while the engine cannot take work (its process died and a new one is starting)."""
        return True

    # --- requests ------------------------------------------------------------------------
    def next_seq_id(self) -> int:
        """A sequence id not used before by this engine."""
        return next(self._ids)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[list[SequenceEvent], None]:
        """Submits `request` and yields its events (all that arrived since the last yield),
        the last list holding the finishing one; raises Overloaded or NotReady when the engine
        refuses it. Leaving before that (cancelled, or closed) aborts the sequence."""
        async for batch in self.generate_many([request]):
            yield batch

    async def generate_many(
        self, requests: Sequence[EngineRequest]
    ) -> AsyncGenerator[list[SequenceEvent], None]:
        """Like `generate` for several sequences submitted together (the n sequences of one
        request, admitted in one step when they fit); yields until every one has finished.
        Leaving early aborts those still running."""
        events: asyncio.Queue[StreamItem] = asyncio.Queue()
        pending = {request.seq_id for request in requests}
        for seq_id in pending:
            self._streams[seq_id] = events
        try:
            self._submit(requests)
            while pending:
                batch = await _drain(events)
                pending.difference_update(event.seq_id for event in batch if event.finish is not None)
                yield batch
        finally:
            for request in requests:
                self._streams.pop(request.seq_id, None)
            for seq_id in pending:
                self._abort(seq_id)

    # --- engine -> streams (on the event loop) -------------------------------------------
    def _route(self, events: Sequence[SequenceEvent]) -> None:
        """Puts each event on the queue of its sequence (events of callers gone are dropped)."""
        streams = self._streams
        for event in events:
            queue = streams.get(event.seq_id)
            if queue is not None:
                queue.put_nowait([event])

    def _fail(self, seq_ids: Sequence[int], error: BaseException) -> None:
        """Ends the streams of `seq_ids` with `error` (raised to their callers)."""
        for seq_id in seq_ids:
            queue = self._streams.get(seq_id)
            if queue is not None:
                queue.put_nowait(error)

    def _fail_all(self, error: BaseException) -> None:
        self._fail(list(self._streams), error)


async def _drain(queue: asyncio.Queue[StreamItem]) -> list[SequenceEvent]:
    """Every event queued (waiting for the first); raises an error found among them."""
    item = await queue.get()
    batch: list[SequenceEvent] = []
    while True:
        if isinstance(item, BaseException):
            raise item
        batch += item
        if queue.empty():
            return batch
        item = queue.get_nowait()


class AsyncEngine(EngineFront):
    """One GenerationEngine run in its worker thread, driven from the event loop."""

    def __init__(
        self,
        model: CausalLM,
        limits: SchedulerLimits,
        *,
        service: str,
        max_batched_tokens: int = 128,
        prefix_cache: PrefixCache | None = None,
        prefill_time_share: float | None = PREFILL_TIME_SHARE,
    ) -> None:
        super().__init__()
        self.engine = build_engine(
            model,
            limits,
            self._on_events,
            service=service,
            max_batched_tokens=max_batched_tokens,
            prefix_cache=prefix_cache,
            prefill_time_share=prefill_time_share,
        )
        self._model_name = model.info.name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[SequenceEvent] = []  # from the engine thread, not dispatched yet
        self._pending_lock = threading.Lock()
        self._wake_pending = False

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Warms the engine up off the event loop (a model it cannot batch fails here), then
        starts its worker thread."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self.engine.warmup)
        except Exception as exc:
            raise RuntimeError(unbatchable(self._model_name, exc)) from exc
        self.engine.start()

    async def stop(self) -> None:
        """Ends every sequence (ABORTED) and stops the worker thread."""
        await asyncio.to_thread(self.engine.stop)

    def _submit(self, requests: Sequence[EngineRequest]) -> None:
        self.engine.submit_all(requests)

    def _abort(self, seq_id: int) -> None:
        self.engine.abort(seq_id)

    # --- engine thread -> event loop -----------------------------------------------------
    def _on_events(self, events: list[SequenceEvent]) -> None:
        """Engine thread -> event loop, once per step; the loop is woken only when it has
        not yet been asked to dispatch (steps that come while it is busy are dispatched together)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._pending_lock:
            self._pending += events
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # loop closing during shutdown
            loop.call_soon_threadsafe(self._dispatch)

    def _dispatch(self) -> None:
        with self._pending_lock:
            events, self._pending = self._pending, []
            self._wake_pending = False
        self._route(events)


def unbatchable(model_name: str, exc: BaseException) -> str:
    """The message of a model the engine cannot serve (its warm-up failed)."""
    return (
        f"model {model_name!r} cannot be served by the generation engine "
        f"(it batches full-attention models with a DynamicCache): {type(exc).__name__}: {exc}"
    )
