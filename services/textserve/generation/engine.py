"""The generation engine: one worker thread running schedule -> forward -> sample -> update.

Each step:
1. `Scheduler.schedule` drops expired sequences and admits waiting ones under the KV budget;
   an admitted sequence looks its prompt up in the prefix cache (generation/prefix_cache.py)
   and joins the prefill queue with the cached part of its prompt already done;
2. rows of sequences that left (finished, cancelled, expired) are dropped from the batch cache;
3. running rows get one decode forward (one token each); what is left of the step's token
   budget (`max_batched_tokens`, like vLLM's max_num_batched_tokens) goes to the prefill
   queue in arrival order: prompts that fit whole are prefilled together (one left-padded
   forward), the others get a chunk (chunked prefill: a long prompt or a burst of new ones
   is spread over several steps, so running streams keep getting a token every step; with
   no running stream there is nothing to protect and up to `max_prefill_tokens` go at once);
   a sequence whose prompt is complete joins the batch and gets its first token, and its
   full prompt blocks go into the prefix cache. While streams run, the prompt work is also
   paced (`PrefillPacer`): at most what takes about a decode step's time, measured, so a
   step that prefills takes at most about twice a decode-only step. A sequence admitted
   while the same prompt is being prefilled (the n sequences of one request) waits for it
   and then forks its keys and values and its last logits: the prompt is computed once, and
   each sequence samples its first token with its own sampler;
4. one token is chosen per row (`sampling`: under the row's grammar when the request is
   constrained, with its logprobs when asked), turned into a text delta (`detokenize`), and
   checked against the request's stop sequences (a completed grammar also stops it);
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
from textserve.core.errors import NotReady, Overloaded
from textserve.generation.detokenize import IncrementalDetokenizer, StopMatcher
from textserve.generation.kv_batch import PaddedKVBatch
from textserve.generation.prefix_cache import PrefixCache
from textserve.generation.sampling import SamplingConfig, SequenceSampler, TokenLogprobs, sample_step
from textserve.generation.scheduler import Finished, FinishStatus, Scheduler, SchedulerStats, SequenceSlot
from textserve.generation.structured import Grammar

log = logging.getLogger(__name__)

# Prompt tokens prefilled in a step even when the running rows use up the step's budget.
_MIN_PREFILL_TOKENS = 16
# Weight of the newest step in the step-time estimates (exponential moving averages).
_STEP_TIME_WEIGHT = 0.25


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
    grammar: Grammar | None = None
    """Structured output: the grammar every token must follow (None: unconstrained)."""
    logprobs: int | None = None
    """None: no logprobs; k >= 0: each token's logprob and the k most likely alternatives."""


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
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    """Logprobs of `token_ids`, one each, when the request asked for them."""
    cached_prompt_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache (set with the first token)."""


EventSink = Callable[[list[SequenceEvent]], None]


class _Sequence:
    """Engine-side state of one admitted sequence."""

    def __init__(self, request: EngineRequest, tokenizer: Any, vocab_size: int, device: str) -> None:
        self.request = request
        self.sampler = SequenceSampler(
            request.sampling, vocab_size, device, grammar=request.grammar, logprobs=request.logprobs
        )
        self.detokenizer = IncrementalDetokenizer(tokenizer, request.prompt_ids)
        self.stops = StopMatcher(request.stop)
        self.history: list[int] | None = list(request.prompt_ids) if self.sampler.uses_history else None
        self.generated = 0
        self.next_token = 0
        self.first_token_seconds: float | None = None
        self.last_token_time = 0.0
        self.prefilled = 0
        """Prompt tokens whose keys and values are held (cached or computed)."""
        self.cached_tokens = 0
        """Prompt tokens reused from the prefix cache."""
        self.leader: int | None = None
        """The sequence prefilling the same prompt, whose keys and values this one forks."""

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
            event.cached_prompt_tokens = self.cached_tokens
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
        max_batched_tokens: int = 128,
        prefix_cache: PrefixCache | None = None,
        prefill_time_share: float | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.tokenizer = tokenizer
        self.device = device
        self.vocab_size = vocab_size
        self.scheduler = scheduler
        self.on_events = on_events
        self.labels = {"service": service, "model": model_name}
        self.batch = PaddedKVBatch(
            model,
            device,
            pad_token_id,
            max_rows=scheduler.limits.max_running,
            max_tokens=scheduler.limits.kv_budget_tokens,
        )
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._failed: str | None = None
        self._requests: dict[int, EngineRequest] = {}  # submitted, not admitted yet (under the lock)
        self._seqs: dict[int, _Sequence] = {}  # admitted (engine thread only)
        self._prefilling: dict[int, _Sequence] = {}  # admitted, prompt not complete (arrival order)
        self._leaders: dict[tuple[int, ...], int] = {}  # prompt -> the sequence computing it
        self.prompt_tokens_computed = 0
        """Prompt tokens run through the model (not reused from the prefix cache or forked)."""
        self.max_batched_tokens = max_batched_tokens
        self.pacer = PrefillPacer(prefill_time_share)
        self.prefix_cache = prefix_cache if prefix_cache is not None and prefix_cache.enabled else None
        if self.prefix_cache is not None:
            scheduler.prefix_pool = self.prefix_cache
        self._thread: threading.Thread | None = None
        self._metrics = metrics if metrics is not None else EngineMetrics(self.labels)
        """Where the generation metrics go (generation/engine_process.py records them in the
        engine's process and replays them in the server's)."""
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
            batch.stage(-4)
            batch.extend(-4, [token] * 3)
            batch.stage(-5, batch.row_kv(-4, 0, 2))
            batch.extend(-5, [token] * 2)
            batch.commit(-5)
            batch.keep({-2, -5})
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
        self.submit_all([request])

    def submit_all(self, requests: Sequence[EngineRequest]) -> None:
        """Queues sequences together (the n sequences of one request): no step runs between
        them, so they are admitted, and prefilled, in the same step when they fit. All or none:
        Overloaded when they do not all fit in the waiting queue."""
        with self._lock:
            if self._failed is not None:
                raise NotReady(f"generation engine failed: {self._failed}")
            if self._stopping:
                raise NotReady("generation engine is stopping")
            waiting, limit = self.scheduler.num_waiting, self.scheduler.limits.max_waiting
            if len(requests) > 1 and waiting + len(requests) > limit:
                raise Overloaded(
                    f"generation queue full: {waiting} sequences waiting and {len(requests)} more asked "
                    f"for, max_waiting_sequences={limit}; retry with backoff"
                )
            try:
                for request in requests:
                    slot = SequenceSlot(
                        seq_id=request.seq_id,
                        prompt_tokens=len(request.prompt_ids),
                        max_new_tokens=request.max_new_tokens,
                        eos_token_ids=self.eos_token_ids,
                        ignore_eos=request.ignore_eos,
                        deadline=request.deadline,
                    )
                    self.scheduler.add(slot)
                    self._requests[request.seq_id] = request
            finally:
                self._metrics.queue(self.scheduler.stats())
        self._wakeup.set()

    def abort(self, seq_id: int) -> None:
        """Ends a sequence now (its client went away); its KV reservation is freed at once."""
        with self._lock:
            self.scheduler.finish([seq_id], FinishStatus.ABORTED)
            self._metrics.queue(self.scheduler.stats())
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
        self._prefilling.clear()
        self._leaders.clear()
        self.batch.reset()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
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
        for item in left:
            self._finish(item, events)
        self.batch.keep({seq_id for seq_id in plan.decode if seq_id in self._seqs})
        running = list(self.batch.rows)  # decode order is the batch's row order
        for request in admitted:
            self._admit(request)
        try:
            sampled = self._forward(running, events)
        except Exception as error:
            log.exception(
                "generation step failed",
                extra={**self.labels, "rows": len(running) + len(self._prefilling)},
            )
            self._fail_step([*running, *self._prefilling], error, events)
            self.on_events(list(events.values()))
            return
        stopped = [seq_id for seq_id, (_, stop) in sampled.items() if stop]
        with self._lock:
            done = self.scheduler.update({seq_id: token for seq_id, (token, _) in sampled.items()})
            done += self.scheduler.finish(stopped, FinishStatus.STOPPED)
            self._metrics.queue(self.scheduler.stats())
        # A sequence aborted while the step ran still gets this step's token; its end is
        # reported with the next plan.
        for item in done:
            self._finish(item, events)
        if events:
            self.on_events(list(events.values()))

    def _admit(self, request: EngineRequest) -> None:
        """Makes an admitted request a sequence in the prefill queue, its cached prefix done."""
        seq = _Sequence(request, self.tokenizer, self.vocab_size, self.device)
        seq_id = request.seq_id
        self._seqs[seq_id] = seq
        self._prefilling[seq_id] = seq
        self._metrics.admitted(len(request.prompt_ids))
        # The same prompt being prefilled already (the n sequences of one request): this one
        # waits, then forks its keys and values and its last logits (`_fork_followers`).
        key = tuple(request.prompt_ids)
        leader = self._leaders.get(key)
        if leader is not None and leader in self._prefilling:
            seq.leader = leader
            return
        self._leaders[key] = seq_id
        if self.prefix_cache is None:
            return
        hit = self.prefix_cache.lookup(request.prompt_ids)
        if hit.kv is not None:
            self.batch.stage(seq_id, hit.kv)
            seq.prefilled = seq.cached_tokens = hit.tokens
            self._metrics.prefix_hit(hit.tokens)

    def _plan_prefill(self, running: int) -> tuple[list[_Sequence], list[tuple[_Sequence, int]]]:
        """This step's prefill work under the token budget, in arrival order: sequences whose
        whole prompt is computed now (together), and (sequence, tokens) chunks of the others."""
        # The budget protects running streams; with none, up to max_prefill_tokens go at once.
        if running:
            budget = self.max_batched_tokens - running
            paced = self.pacer.budget()
            if paced is not None:
                budget = min(budget, paced)
            budget = max(budget, _MIN_PREFILL_TOKENS)
        else:
            budget = max(self.max_batched_tokens, self.scheduler.limits.max_prefill_tokens)
        whole: list[_Sequence] = []
        chunks: list[tuple[_Sequence, int]] = []
        for seq in self._prefilling.values():
            if budget <= 0:
                break
            if seq.leader is not None:
                continue
            remaining = len(seq.request.prompt_ids) - seq.prefilled
            take = min(remaining, budget)
            if seq.prefilled == 0 and take == remaining:
                whole.append(seq)
                budget -= take
                continue
            if running and whole:
                break
            chunks.append((seq, take))
            budget -= take
            if running:
                # While streams run, a step adds one prompt forward at most (whole prompts
                # together, or one chunk): each forward costs a fixed overhead beyond its
                # tokens, and a step of several was the running streams' longest wait.
                break
        return whole, chunks

    def _forward(self, running: list[int], events: dict[int, SequenceEvent]) -> dict[int, tuple[int, bool]]:
        """Decode for running rows, prefill work for new ones; returns {seq_id: (token, stopped)}
        for every row that got a token (running ones, and new ones whose prompt is complete)."""
        logits_parts: list[torch.Tensor] = []
        rows: list[_Sequence] = []
        started = time.perf_counter()
        computed = self.prompt_tokens_computed
        if running:
            logits_parts.append(self.batch.decode([self._seqs[seq_id].next_token for seq_id in running]))
            rows += [self._seqs[seq_id] for seq_id in running]
        whole, chunks = self._plan_prefill(len(running))
        prompt_started = time.perf_counter()
        if whole:
            logits_parts.append(
                self.batch.prefill(
                    [seq.request.seq_id for seq in whole], [seq.request.prompt_ids for seq in whole]
                )
            )
            for seq in whole:
                seq.prefilled = len(seq.request.prompt_ids)
                self.prompt_tokens_computed += seq.prefilled
            rows += whole
        for seq, take in chunks:
            seq_id, prompt = seq.request.seq_id, seq.request.prompt_ids
            if seq_id not in self.batch.staged:
                self.batch.stage(seq_id)
            logits = self.batch.extend(seq_id, prompt[seq.prefilled : seq.prefilled + take])
            seq.prefilled += take
            self.prompt_tokens_computed += take
            if seq.prefilled == len(prompt):
                self._remember_prefix(seq)
                self.batch.commit(seq_id)
                logits_parts.append(logits.unsqueeze(0))
                rows.append(seq)
        for seq in whole:
            self._remember_prefix(seq)
        prompt_seconds = time.perf_counter() - prompt_started if whole or chunks else 0.0
        completed = rows[len(running) :]
        for seq in completed:
            del self._prefilling[seq.request.seq_id]
            self._forget_leader(seq)
        if not rows:
            return {}
        logits = logits_parts[0] if len(logits_parts) == 1 else torch.cat(logits_parts, dim=0)
        positions = {seq.request.seq_id: len(running) + i for i, seq in enumerate(completed)}
        forks = self._fork_followers(positions)
        if forks:
            logits = torch.cat([logits, logits[[index for _, index in forks]]], dim=0)
            rows += [seq for seq, _ in forks]
        sample = sample_step(
            logits,
            [seq.sampler for seq in rows],
            [seq.history if seq.history is not None else () for seq in rows],
        )
        tokens = sample.tokens
        seconds = time.perf_counter() - started
        self.pacer.observe(len(running), self.prompt_tokens_computed - computed, seconds, prompt_seconds)
        now = time.monotonic()
        result: dict[int, tuple[int, bool]] = {}
        for seq, token, logprobs in zip(rows, tokens, sample.logprobs, strict=True):
            seq_id = seq.request.seq_id
            event = events.setdefault(seq_id, SequenceEvent(seq_id, [], "", seed=seq.sampler.seed))
            previous = seq.last_token_time
            stopped = seq.add_token(token, now, event) or seq.sampler.constraint_done
            if logprobs is not None:
                event.logprobs.append(logprobs)
            if seq.generated == 1:
                self._metrics.first_token(now - seq.request.arrival)
            else:
                self._metrics.inter_token(now - previous)
            result[seq_id] = (token, stopped)
        self._metrics.step(len(rows), len(tokens), seconds)
        return result

    def _fork_followers(self, completed: dict[int, int]) -> list[tuple[_Sequence, int]]:
        """Joins the sequences waiting on a prompt completed this step, each with a copy of its
        keys and values; returns (follower, logits row of its leader) for each."""
        forks: list[tuple[_Sequence, int]] = []
        for seq in list(self._prefilling.values()):
            if seq.leader not in completed:
                continue
            seq_id, length = seq.request.seq_id, len(seq.request.prompt_ids)
            self.batch.stage(seq_id, self.batch.row_kv(seq.leader, 0, length))
            self.batch.commit(seq_id)
            forks.append((seq, completed[seq.leader]))
            seq.prefilled, seq.leader = length, None
            del self._prefilling[seq_id]
        return forks

    def _forget_leader(self, seq: _Sequence) -> None:
        """Forgets a sequence as the one computing its prompt (complete, or gone); when it left
        before completing, its followers prefill the prompt themselves, the first one leading."""
        key = tuple(seq.request.prompt_ids)
        if self._leaders.get(key) == seq.request.seq_id:
            del self._leaders[key]
        if seq.prefilled == len(seq.request.prompt_ids):
            return
        successor: int | None = None
        for other in self._prefilling.values():
            if other.leader == seq.request.seq_id:
                other.leader = successor
                if successor is None:
                    successor = other.request.seq_id
                    self._leaders[key] = successor

    def _remember_prefix(self, seq: _Sequence) -> None:
        """Copies the full prompt blocks not cached yet into the prefix cache (within the KV
        budget's room)."""
        cache = self.prefix_cache
        if cache is None:
            return
        missing = cache.missing(seq.request.prompt_ids)
        if not missing:
            return
        size = cache.block_tokens
        with self._lock:
            room = self.scheduler.kv_room() + cache.tokens
        for index, key, parent, tokens in missing:
            kv = self.batch.row_kv(seq.request.seq_id, index * size, (index + 1) * size)
            if not cache.insert(key, parent, tokens, kv, room):
                break
        cache.touch(seq.request.prompt_ids)
        self._metrics.prefix_tokens(cache.tokens)

    def _finish(self, item: Finished, events: dict[int, SequenceEvent]) -> None:
        """Adds the last event of a sequence and forgets it (at most once per sequence)."""
        seq = self._seqs.pop(item.seq_id, None)
        if self._prefilling.pop(item.seq_id, None) is not None and seq is not None:
            self._forget_leader(seq)
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
            self._metrics.queue(self.scheduler.stats())
        self.batch.reset()
        self._seqs.clear()
        self._prefilling.clear()
        self._leaders.clear()
        message = f"model forward failed: {type(error).__name__}: {error}"
        for seq_id in failed:
            events[seq_id] = SequenceEvent(seq_id, [], "", FinishStatus.ABORTED, error=message)
            self._metrics.finished(FinishStatus.ABORTED)


class PrefillPacer:
    """Sizes the prompt work of a step that also decodes running streams from measured step
    times: at most what takes `share` of a decode-only step, so such a step takes at most
    (1 + share) x a decode step and running streams' inter-token gaps at most grow by that.

    Both times are moving averages measured in every step (forward and sampling, so they hold
    on any device): a step's time less its prompt work is a decode step of the rows it ran
    (so the estimate follows the batch as streams join and leave, also while every step has
    prompt work), and the prompt work's time per prompt token.
    """

    def __init__(self, share: float | None) -> None:
        self.share = share
        """None: no bound (only the engine's `max_batched_tokens`)."""
        self.decode_seconds: float | None = None
        self.prompt_token_seconds: float | None = None

    def observe(self, running: int, prompt_tokens: int, seconds: float, prompt_seconds: float) -> None:
        """Adds a step's time: `running` rows decoded, `prompt_tokens` prompt tokens computed
        in `prompt_seconds` of the step's `seconds`."""
        if running:
            self.decode_seconds = _average(self.decode_seconds, max(seconds - prompt_seconds, 0.0))
        if prompt_tokens:
            self.prompt_token_seconds = _average(self.prompt_token_seconds, prompt_seconds / prompt_tokens)

    def budget(self) -> int | None:
        """Prompt tokens a step with running streams may compute (None: no bound, until both
        times are measured)."""
        share, decode, per_token = self.share, self.decode_seconds, self.prompt_token_seconds
        if share is None or decode is None or per_token is None or per_token <= 0:
            return None
        return int(share * decode / per_token)


class EngineMetrics:
    """The generation metrics, recorded in one place (every method takes plain values, so the
    calls can be recorded in one process and replayed in another)."""

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
        self.prefix_hits = metrics.GEN_PREFIX_HITS.labels(**labels)
        self.prefix_saved = metrics.GEN_PREFIX_SAVED.labels(**labels)
        self.prefix_held = metrics.GEN_PREFIX_TOKENS.labels(**labels)
        self.finished_by = {
            status: metrics.GEN_FINISHED.labels(**labels, reason=_reason(status)) for status in FinishStatus
        }
        self.labels = labels

    def capacity(self, tokens: int) -> None:
        self.kv_capacity.set(tokens)

    def queue(self, stats: SchedulerStats) -> None:
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.kv_used.set(stats.kv_tokens_used)
        self.prefix_held.set(stats.prefix_cached_tokens)

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

    def prefix_hit(self, tokens: int) -> None:
        self.prefix_hits.inc()
        self.prefix_saved.inc(tokens)

    def prefix_tokens(self, tokens: int) -> None:
        self.prefix_held.set(tokens)

    def finished(self, status: FinishStatus) -> None:
        self.finished_by[status].inc()


def _average(average: float | None, value: float) -> float:
    """The moving average `average` (None: no value yet) updated with `value`."""
    return value if average is None else average + _STEP_TIME_WEIGHT * (value - average)


def _reason(status: FinishStatus) -> str:
    """The `reason` label of a finish status (an expired sequence counts as cancelled)."""
    return "cancelled" if status in (FinishStatus.ABORTED, FinishStatus.EXPIRED) else status.value
