"""The generation engine: one worker thread running schedule -> forward -> sample -> update.

Each step:
1. `Scheduler.schedule` drops expired sequences and admits waiting ones under the KV budget;
2. rows of sequences that left (finished, cancelled, expired) are dropped from the batch cache;
3. running rows get one decode forward, newly admitted ones one batched prefill forward
   (then join the batch);
4. one token is chosen per row (`sampling`), turned into a text delta (`detokenize`), and
   checked against the request's stop sequences;
5. `Scheduler.update` / `finish` end sequences (EOS, length, stop) and free their KV at once;
6. the step's events are handed to `on_events` in one call (generation/async_engine.py
   moves them onto the event loop), and the generation metrics are updated.

Requests are submitted and aborted from any thread; the scheduler is only touched under
one lock, held for bookkeeping and never during a forward pass. A failed forward fails
the sequences of that step and the engine carries on; if the thread itself dies, every
sequence is failed and `submit` refuses new work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from textserve.core import metrics
from textserve.core.errors import NotReady
from textserve.generation.detokenize import IncrementalDetokenizer, StopMatcher
from textserve.generation.kv_batch import PaddedKVBatch
from textserve.generation.sampling import SamplingConfig, SequenceSampler, sample_next
from textserve.generation.scheduler import Finished, FinishStatus, Scheduler, SequenceSlot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRequest:
    """One sequence to generate, already tokenized and validated."""

    seq_id: int
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    deadline: float | None = None
    """Absolute time.monotonic() deadline, or None."""
    arrival: float = field(default_factory=time.monotonic)
    """time.monotonic() when the request was received (time to first token counts from here)."""


@dataclass
class SequenceEvent:
    """New output of one sequence from one step; the last event carries `finish` (or `error`)."""

    seq_id: int
    token_ids: list[int]
    text: str
    finish: FinishStatus | None = None
    error: str | None = None
    output_tokens: int = 0
    """Tokens generated so far."""
    seed: int | None = None
    """Seed the sequence samples with (None for greedy)."""
    first_token_seconds: float | None = None
    """Time from arrival to the first token; set once it is known."""


EventSink = Callable[[list[SequenceEvent]], None]


class _Sequence:
    """Engine-side state of one admitted sequence."""

    def __init__(self, request: EngineRequest, tokenizer: Any, vocab_size: int, device: str) -> None:
        self.request = request
        self.sampler = SequenceSampler(request.sampling, vocab_size, device)
        self.detokenizer = IncrementalDetokenizer(tokenizer, request.prompt_ids)
        self.stops = StopMatcher(request.stop)
        self.history: list[int] | None = list(request.prompt_ids) if self.sampler.uses_history else None
        self.generated = 0
        self.next_token = 0
        self.first_token_seconds: float | None = None
        self.last_token_time = 0.0

    def add_token(self, token: int, now: float, event: SequenceEvent) -> bool:
        """Records a token into `event`; returns True when a stop sequence was produced."""
        self.generated += 1
        self.next_token = token
        if self.history is not None:
            self.history.append(token)
        event.token_ids.append(token)
        event.output_tokens = self.generated
        text, stopped = self.stops.feed(self.detokenizer.add(token))
        event.text += text
        if self.first_token_seconds is None:
            self.first_token_seconds = now - self.request.arrival
            event.first_token_seconds = self.first_token_seconds
        self.last_token_time = now
        return stopped

    def final_text(self, status: FinishStatus) -> str:
        """Text still held back, sent with the last event (none after a stop or a cancel)."""
        if status in (FinishStatus.LENGTH, FinishStatus.EOS):
            text, stopped = self.stops.feed(self.detokenizer.flush())
            return text if stopped else text + self.stops.flush()
        return ""


class GenerationEngine:
    """Runs the continuous-batching loop of one model in a worker thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        vocab_size: int,
        scheduler: Scheduler,
        on_events: EventSink,
        *,
        service: str,
        model_name: str,
        eos_token_ids: frozenset[int] = frozenset(),
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.tokenizer = tokenizer
        self.device = device
        self.vocab_size = vocab_size
        self.scheduler = scheduler
        self.on_events = on_events
        self.labels = {"service": service, "model": model_name}
        self.batch = PaddedKVBatch(model, device, pad_token_id)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._failed: str | None = None
        self._requests: dict[int, EngineRequest] = {}  # submitted, not admitted yet (under the lock)
        self._seqs: dict[int, _Sequence] = {}  # admitted (engine thread only)
        self._thread: threading.Thread | None = None
        self._metrics = _EngineMetrics(self.labels)
        self._metrics.capacity(scheduler.limits.kv_budget_tokens)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Starts the worker thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"generation-{self.labels['model']}", daemon=True
        )
        self._thread.start()

    def warmup(self) -> None:
        """Runs every batch operation once on dummy tokens (prefill of two lengths, decode, a
        join, a drop), so a model the engine cannot batch fails at start, not on a request."""
        batch = PaddedKVBatch(self.model, self.device, self.batch.pad_token_id)
        token = self.batch.pad_token_id
        with torch.inference_mode():
            batch.prefill([-1, -2], [[token] * 3, [token] * 5])
            batch.decode([token, token])
            batch.prefill([-3], [[token] * 2])
            batch.keep({-2, -3})
            batch.decode([token, token])

    def stop(self, timeout: float = 30.0) -> None:
        """Ends every sequence (ABORTED), then stops the worker thread."""
        with self._lock:
            self._stopping = True
            self.scheduler.finish_all(FinishStatus.ABORTED)
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- requests (any thread) -----------------------------------------------------------
    def submit(self, request: EngineRequest) -> None:
        """Queues a sequence; raises Overloaded when the waiting queue is full, NotReady when stopped.

        Sequences submitted before `start` wait for the worker (or for `step` calls in tests).
        """
        slot = SequenceSlot(
            seq_id=request.seq_id,
            prompt_tokens=len(request.prompt_ids),
            max_new_tokens=request.max_new_tokens,
            eos_token_ids=self.eos_token_ids,
            ignore_eos=request.ignore_eos,
            deadline=request.deadline,
        )
        with self._lock:
            if self._failed is not None:
                raise NotReady(f"generation engine failed: {self._failed}")
            if self._stopping:
                raise NotReady("generation engine is stopping")
            self.scheduler.add(slot)
            self._requests[request.seq_id] = request
            self._metrics.queue(self.scheduler)
        self._wakeup.set()

    def abort(self, seq_id: int) -> None:
        """Ends a sequence now (its client went away); its KV reservation is freed at once."""
        with self._lock:
            self.scheduler.finish([seq_id], FinishStatus.ABORTED)
            self._metrics.queue(self.scheduler)
        self._wakeup.set()

    # --- the loop (worker thread) --------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    self._wakeup.clear()
                    with self._lock:
                        if self._stopping and not self.scheduler.has_work:
                            break
                        idle = not self.scheduler.has_work
                    if idle:
                        self._wakeup.wait()
                        continue
                    self.step()
        except BaseException as error:  # pragma: no cover - a bug in the loop itself
            log.exception("generation engine died", extra=self.labels)
            self._die(error)

    def _die(self, error: BaseException) -> None:
        with self._lock:
            self._failed = f"{type(error).__name__}: {error}"
            leftover = self.scheduler.finish_all(FinishStatus.ABORTED)
            self._requests.clear()
        events = [
            SequenceEvent(item.seq_id, [], "", FinishStatus.ABORTED, error=self._failed) for item in leftover
        ]
        self._seqs.clear()
        self.batch.reset()
        if events:
            self.on_events(events)

    def step(self) -> None:
        """One engine step (the worker thread's loop body; tests may call it directly)."""
        events: dict[int, SequenceEvent] = {}
        with self._lock:
            plan = self.scheduler.schedule(time.monotonic())
            admitted = [self._requests.pop(seq_id) for seq_id in plan.prefill]
            # Sequences that left without passing through `update`: still waiting, or running
            # (expired, aborted); those that stopped last step were already reported.
            left = [
                item
                for item in plan.finished
                if self._requests.pop(item.seq_id, None) is not None or item.seq_id in self._seqs
            ]
            self._metrics.queue(self.scheduler)
        for item in left:
            self._finish(item, events)
        self.batch.keep({seq_id for seq_id in plan.decode if seq_id in self._seqs})
        running = list(self.batch.rows)  # decode order is the batch's row order
        try:
            sampled = self._forward(running, admitted, events)
        except Exception as error:
            log.exception(
                "generation step failed", extra={**self.labels, "rows": len(running) + len(admitted)}
            )
            self._fail_step([*running, *(r.seq_id for r in admitted)], error, events)
            self.on_events(list(events.values()))
            return
        stopped = [seq_id for seq_id, (_, stop) in sampled.items() if stop]
        with self._lock:
            done = self.scheduler.update({seq_id: token for seq_id, (token, _) in sampled.items()})
            done += self.scheduler.finish(stopped, FinishStatus.STOPPED)
            self._metrics.queue(self.scheduler)
        # A sequence aborted while the step ran still gets this step's token; its end is
        # reported with the next plan.
        for item in done:
            self._finish(item, events)
        if events:
            self.on_events(list(events.values()))

    def _forward(
        self, running: list[int], admitted: list[EngineRequest], events: dict[int, SequenceEvent]
    ) -> dict[int, tuple[int, bool]]:
        """Decode for running rows, prefill for admitted ones; returns {seq_id: (token, stopped)}."""
        logits_parts: list[torch.Tensor] = []
        rows: list[_Sequence] = []
        started = time.perf_counter()
        if running:
            logits_parts.append(self.batch.decode([self._seqs[seq_id].next_token for seq_id in running]))
            rows += [self._seqs[seq_id] for seq_id in running]
        if admitted:
            new = [_Sequence(request, self.tokenizer, self.vocab_size, self.device) for request in admitted]
            for seq in new:
                self._seqs[seq.request.seq_id] = seq
            logits_parts.append(
                self.batch.prefill([r.seq_id for r in admitted], [r.prompt_ids for r in admitted])
            )
            rows += new
            self._metrics.admitted(sum(len(r.prompt_ids) for r in admitted))
        if not rows:
            return {}
        logits = logits_parts[0] if len(logits_parts) == 1 else torch.cat(logits_parts, dim=0)
        tokens = sample_next(
            logits,
            [seq.sampler for seq in rows],
            [seq.history if seq.history is not None else () for seq in rows],
        )
        seconds = time.perf_counter() - started
        now = time.monotonic()
        result: dict[int, tuple[int, bool]] = {}
        for seq, token in zip(rows, tokens, strict=True):
            seq_id = seq.request.seq_id
            event = events.setdefault(seq_id, SequenceEvent(seq_id, [], "", seed=seq.sampler.seed))
            previous = seq.last_token_time
            stopped = seq.add_token(token, now, event)
            if seq.generated == 1:
                self._metrics.first_token(now - seq.request.arrival)
            else:
                self._metrics.inter_token(now - previous)
            result[seq_id] = (token, stopped)
        self._metrics.step(len(rows), len(tokens), seconds)
        return result

    def _finish(self, item: Finished, events: dict[int, SequenceEvent]) -> None:
        """Adds the last event of a sequence and forgets it (at most once per sequence)."""
        seq = self._seqs.pop(item.seq_id, None)
        event = events.get(item.seq_id)
        if event is None:
            event = SequenceEvent(item.seq_id, [], "")
            events[item.seq_id] = event
        if seq is not None:
            event.text += seq.final_text(item.status)
            event.output_tokens = seq.generated
            event.seed = seq.sampler.seed
            event.first_token_seconds = seq.first_token_seconds
        event.finish = item.status
        self._metrics.finished(item.status)

    def _fail_step(
        self, seq_ids: Sequence[int], error: BaseException, events: dict[int, SequenceEvent]
    ) -> None:
        """Fails the step's sequences, and any other row lost with the batch cache."""
        failed = {*seq_ids, *self._seqs}
        with self._lock:
            self.scheduler.finish(failed, FinishStatus.ABORTED)
            self._metrics.queue(self.scheduler)
        self.batch.reset()
        self._seqs.clear()
        message = f"model forward failed: {type(error).__name__}: {error}"
        for seq_id in failed:
            events[seq_id] = SequenceEvent(seq_id, [], "", FinishStatus.ABORTED, error=message)
            self._metrics.finished(FinishStatus.ABORTED)


class _EngineMetrics:
    """The generation metrics, recorded in one place."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.running = metrics.GEN_RUNNING.labels(**labels)
        self.waiting = metrics.GEN_WAITING.labels(**labels)
        self.kv_used = metrics.GEN_KV_USED.labels(**labels)
        self.kv_capacity = metrics.GEN_KV_CAPACITY.labels(**labels)
        self.ttft = metrics.GEN_TTFT.labels(**labels)
        self.itl = metrics.GEN_INTER_TOKEN.labels(**labels)
        self.tokens = metrics.GEN_TOKENS.labels(**labels)
        versioned = {**labels, "version": "1"}  # generation serves one model version
        self.input_tokens = metrics.INPUT_TOKENS.labels(**versioned)
        self.batch_size = metrics.BATCH_SIZE.labels(**versioned)
        self.inference = metrics.INFERENCE_DURATION.labels(**versioned)
        self.labels = labels

    def capacity(self, tokens: int) -> None:
        self.kv_capacity.set(tokens)

    def queue(self, scheduler: Scheduler) -> None:
        stats = scheduler.stats()
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.kv_used.set(stats.kv_tokens_used)

    def admitted(self, prompt_tokens: int) -> None:
        self.input_tokens.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def step(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)
        self.tokens.inc(tokens)

    def finished(self, status: FinishStatus) -> None:
        reason = "cancelled" if status in (FinishStatus.ABORTED, FinishStatus.EXPIRED) else status.value
        metrics.GEN_FINISHED.labels(**self.labels, reason=reason).inc()
