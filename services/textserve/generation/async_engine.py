"""The async front of the generation engine: submit a sequence, get its events as an async stream.

`AsyncEngine` owns the engine's worker thread (warm up, start, stop) and the hand-off from
that thread to the event loop: the engine reports each step's events in one call from its
thread; they are moved onto the loop and routed to the queue of the sequence they belong to.
`generate` submits one sequence and yields its events until the one that finishes it. A
caller that leaves early (its task is cancelled, or it closes the stream) aborts the
sequence, which frees its batch slot and KV reservation at the engine's next step.

It knows nothing of requests' validation, tokenization or the cache (generation/service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncGenerator, Sequence

from textserve.generation.engine import EngineRequest, GenerationEngine, SequenceEvent
from textserve.generation.prefix_cache import PrefixCache
from textserve.generation.scheduler import Scheduler, SchedulerLimits
from textserve.runtime.causal_lm import CausalLM

# While streams run, a step prefills at most what takes this share of a decode step (the
# engine's `prefill_time_share`): the inter-token gap of a running stream at most doubles
# while new prompts join.
PREFILL_TIME_SHARE = 1.0


class AsyncEngine:
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
        info = model.info
        pad = model.tokenizer.pad_token_id
        self.engine = GenerationEngine(
            model.model,
            model.tokenizer,
            model.device,
            info.vocab_size,
            Scheduler(limits),
            self._on_events,
            service=service,
            model_name=info.name,
            eos_token_ids=info.eos_token_ids,
            pad_token_id=int(pad) if pad is not None else 0,
            max_batched_tokens=max_batched_tokens,
            prefix_cache=prefix_cache,
            prefill_time_share=prefill_time_share,
        )
        self._model_name = info.name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[list[SequenceEvent]]] = {}
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
            raise RuntimeError(
                f"model {self._model_name!r} cannot be served by the generation engine "
                f"(it batches full-attention models with a DynamicCache): {type(exc).__name__}: {exc}"
            ) from exc
        self.engine.start()

    async def stop(self) -> None:
        """Ends every sequence (ABORTED) and stops the worker thread."""
        await asyncio.to_thread(self.engine.stop)

    # --- requests ------------------------------------------------------------------------
    def next_seq_id(self) -> int:
        """A sequence id not used before by this engine."""
        return next(self._ids)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[list[SequenceEvent], None]:
        """Submits `request` and yields its events (all that arrived since the last yield),
        the last list holding the finishing one; raises Overloaded or NotReady from `submit`.

        Leaving before that (cancelled, or closed) aborts the sequence.
        """
        seq_id = request.seq_id
        events: asyncio.Queue[list[SequenceEvent]] = asyncio.Queue()
        self._streams[seq_id] = events
        finished = False
        try:
            self.engine.submit(request)
            while not finished:
                batch = await events.get()
                while not events.empty():
                    batch += events.get_nowait()
                finished = any(event.finish is not None for event in batch)
                yield batch
        finally:
            self._streams.pop(seq_id, None)
            if not finished:
                self.engine.abort(seq_id)

    async def generate_many(
        self, requests: Sequence[EngineRequest]
    ) -> AsyncGenerator[list[SequenceEvent], None]:
        """Like `generate` for several sequences submitted together (the n sequences of one
        request, admitted in one step when they fit); yields until every one has finished.
        Leaving early aborts those still running."""
        events: asyncio.Queue[list[SequenceEvent]] = asyncio.Queue()
        pending = {request.seq_id for request in requests}
        for seq_id in pending:
            self._streams[seq_id] = events
        try:
            self.engine.submit_all(requests)
            while pending:
                batch = await events.get()
                while not events.empty():
                    batch += events.get_nowait()
                pending.difference_update(event.seq_id for event in batch if event.finish is not None)
                yield batch
        finally:
            for request in requests:
                self._streams.pop(request.seq_id, None)
            for seq_id in pending:
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
        streams = self._streams
        for event in events:
            queue = streams.get(event.seq_id)
            if queue is not None:
                queue.put_nowait([event])
