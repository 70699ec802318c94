"""Continuous-batching scheduler: which sequences run at the next decode step.

A plain synchronous class (no asyncio, no torch, no I/O) so its unit tests feed it fake
model outputs. The engine drives it once per step:

    plan = scheduler.schedule(now)   # drops expired sequences, admits waiting ones
    ... model forward for plan.prefill (new) and plan.decode (running) ...
    finished = scheduler.update({seq_id: token_id, ...})

Admission is first-come first-served and never overcommits memory: every sequence
reserves `prompt_tokens + max_new_tokens` KV tokens for its whole life, and because the
engine keeps one left-padded batch cache, the memory a batch can reach is
`running sequences x the longest reservation` ("padded KV tokens"). A waiting sequence is
admitted only when that product, with it included, stays within `kv_budget_tokens`, the
running batch has a free slot, and this step's prefill (new sequences x their longest
prompt) stays within `max_prefill_tokens`; otherwise it waits (the head of the queue is
never overtaken, so long requests do not starve). A sequence leaves the running batch
and gives its reservation back in the same call that finishes it: `update` (EOS or
length), `finish` (a stop string, or a client that went away) or `schedule` (deadline).

Reused prompt prefixes (generation/prefix_cache.py) live in the same budget: the tokens the
prefix cache holds are counted on top of the running reservations, and when a waiting
sequence would fit without them, least recently used prefix blocks are evicted to make
room (`PrefixPool`). Running sequences never wait for the prefix cache.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from textserve.core.errors import Overloaded


class FinishStatus(enum.Enum):
    """Why a sequence stopped."""

    LENGTH = "length"
    """max_new_tokens were generated."""
    EOS = "eos"
    """The model produced an end-of-sequence token."""
    STOPPED = "stop"
    """A stop sequence appeared in the text."""
    ABORTED = "cancelled"
    """The client cancelled, or the server is shutting down."""
    EXPIRED = "expired"
    """The request's deadline passed."""


class PrefixPool(Protocol):
    """KV tokens held outside the running sequences that can be given back on demand."""

    @property
    def tokens(self) -> int:
        """Tokens held now."""

    def evict(self, tokens: int) -> int:
        """Frees at least `tokens` tokens if it holds that many; returns the tokens freed."""


@dataclass(frozen=True)
class SchedulerLimits:
    """The budget the scheduler admits sequences under."""

    max_running: int
    """Most sequences decoded together."""
    max_waiting: int
    """Most sequences waiting for admission; more are rejected at once."""
    kv_budget_tokens: int
    """Padded KV tokens the running batch may reserve."""
    max_prefill_tokens: int
    """Most padded prompt tokens (new sequences x longest prompt) prefilled in one step."""


@dataclass(eq=False)
class SequenceSlot:
    """What the scheduler knows of one sequence."""

    seq_id: int
    prompt_tokens: int
    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    deadline: float | None = None
    """Absolute time.monotonic() deadline, or None."""
    output_tokens: int = 0
    status: FinishStatus | None = None

    @property
    def reserved_tokens(self) -> int:
        """KV tokens this sequence may come to hold."""
        return self.prompt_tokens + self.max_new_tokens

    @property
    def finished(self) -> bool:
        """True once the sequence has a finish status."""
        return self.status is not None


@dataclass(frozen=True)
class Finished:
    """A sequence that left the scheduler, and why."""

    seq_id: int
    status: FinishStatus
    output_tokens: int


@dataclass
class SchedulerOutput:
    """The plan of one step."""

    prefill: list[int] = field(default_factory=list)
    """Sequences admitted now; their prompts are prefilled this step (oldest first)."""
    decode: list[int] = field(default_factory=list)
    """Sequences already running; each gets one decode step."""
    finished: list[Finished] = field(default_factory=list)
    """Sequences that left since the previous plan without going through `update`
    (deadline passed, aborted, stopped); the engine drops their state."""

    @property
    def empty(self) -> bool:
        """True when there is nothing to run."""
        return not self.prefill and not self.decode


@dataclass(frozen=True)
class SchedulerStats:
    """Gauges of the scheduler's state."""

    running: int
    waiting: int
    kv_tokens_used: int
    kv_tokens_capacity: int
    prefix_cached_tokens: int = 0
    """KV tokens held by the prefix cache (counted in the budget, evicted on demand)."""


class Scheduler:
    """FIFO continuous-batching scheduler under a padded KV-token budget."""

    def __init__(self, limits: SchedulerLimits, prefix_pool: PrefixPool | None = None) -> None:
        self.limits = limits
        self.prefix_pool = prefix_pool
        self._waiting: deque[SequenceSlot] = deque()
        self._running: dict[int, SequenceSlot] = {}
        self._left: list[Finished] = []

    # --- admission -----------------------------------------------------------------------
    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why a sequence could never be admitted (its reservation alone is over the budget), or None."""
        reserved = prompt_tokens + max_new_tokens
        if reserved > self.limits.kv_budget_tokens:
            return (
                f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) = {reserved} "
                f"exceeds kv_budget_tokens={self.limits.kv_budget_tokens}"
            )
        return None

    def add(self, slot: SequenceSlot) -> None:
        """Queues a sequence; raises Overloaded at once when the waiting queue is full."""
        if len(self._waiting) >= self.limits.max_waiting:
            raise Overloaded(
                f"generation queue full: {len(self._waiting)} sequences waiting, "
                f"max_waiting_sequences={self.limits.max_waiting}; retry with backoff"
            )
        problem = self.check_fits(slot.prompt_tokens, slot.max_new_tokens)
        if problem is not None:
            raise ValueError(problem)
        if slot.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self._waiting.append(slot)

    # --- one step ------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        """Drops expired sequences, admits waiting ones, and returns this step's plan."""
        output = SchedulerOutput(finished=self._left)
        self._left = []
        self._expire(now, output.finished)
        output.decode = list(self._running)
        longest = max((slot.reserved_tokens for slot in self._running.values()), default=0)
        longest_prompt = 0
        while self._waiting and len(self._running) < self.limits.max_running:
            head = self._waiting[0]
            new_longest = max(longest, head.reserved_tokens)
            if not self._make_room((len(self._running) + 1) * new_longest):
                break
            new_prompt = max(longest_prompt, head.prompt_tokens)
            if output.prefill and (len(output.prefill) + 1) * new_prompt > self.limits.max_prefill_tokens:
                break
            self._waiting.popleft()
            self._running[head.seq_id] = head
            output.prefill.append(head.seq_id)
            longest, longest_prompt = new_longest, new_prompt
        return output

    def update(self, sampled: Mapping[int, int]) -> list[Finished]:
        """Records one new token per sequence; returns those that finished (EOS or length).

        Tokens of sequences that are no longer running (finished while the step ran) are ignored.
        """
        finished: list[Finished] = []
        for seq_id, token in sampled.items():
            slot = self._running.get(seq_id)
            if slot is None:
                continue
            slot.output_tokens += 1
            if not slot.ignore_eos and token in slot.eos_token_ids:
                finished.append(self._remove(slot, FinishStatus.EOS))
            elif slot.output_tokens >= slot.max_new_tokens:
                finished.append(self._remove(slot, FinishStatus.LENGTH))
        return finished

    def finish(self, seq_ids: Iterable[int], status: FinishStatus) -> list[Finished]:
        """Ends sequences now (stop string, client gone, shutdown) and frees their KV at once.

        They are also reported in the next plan's `finished`. Unknown or already finished
        ids are ignored.
        """
        finished: list[Finished] = []
        for seq_id in seq_ids:
            slot = self._running.get(seq_id)
            if slot is None:
                slot = next((s for s in self._waiting if s.seq_id == seq_id), None)
            if slot is None or slot.finished:
                continue
            item = self._remove(slot, status)
            self._left.append(item)
            finished.append(item)
        return finished

    def finish_all(self, status: FinishStatus) -> list[Finished]:
        """Ends every waiting and running sequence (shutdown)."""
        return self.finish([*self._running, *(s.seq_id for s in self._waiting)], status)

    # --- state ---------------------------------------------------------------------------
    @property
    def running(self) -> Collection[int]:
        """Ids of the running sequences, in admission order."""
        return self._running.keys()

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for admission."""
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        """True while anything waits or runs, or a finished sequence is still to be reported."""
        return bool(self._waiting or self._running or self._left)

    def reserved_tokens(self) -> int:
        """Padded KV tokens the running sequences reserve (rows x the longest reservation)."""
        longest = max((slot.reserved_tokens for slot in self._running.values()), default=0)
        return len(self._running) * longest

    def kv_room(self) -> int:
        """KV tokens neither reserved by running sequences nor held by the prefix cache."""
        held = self.prefix_pool.tokens if self.prefix_pool is not None else 0
        return self.limits.kv_budget_tokens - self.reserved_tokens() - held

    def stats(self) -> SchedulerStats:
        """Running and waiting counts and the padded KV tokens reserved."""
        return SchedulerStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_tokens_used=self.reserved_tokens(),
            kv_tokens_capacity=self.limits.kv_budget_tokens,
            prefix_cached_tokens=self.prefix_pool.tokens if self.prefix_pool is not None else 0,
        )

    # --- internals -----------------------------------------------------------------------
    def _make_room(self, reserved: int) -> bool:
        """True when `reserved` padded tokens fit in the budget beside the prefix cache,
        evicting prefix blocks when that is what it takes."""
        budget = self.limits.kv_budget_tokens
        if reserved > budget:
            return False
        pool = self.prefix_pool
        if pool is None:
            return True
        over = reserved + pool.tokens - budget
        if over > 0:
            pool.evict(over)
        return reserved + pool.tokens <= budget

    def _expire(self, now: float, into: list[Finished]) -> None:
        expired = [
            slot
            for slot in (*self._running.values(), *self._waiting)
            if slot.deadline is not None and slot.deadline <= now
        ]
        for slot in expired:
            into.append(self._remove(slot, FinishStatus.EXPIRED))

    def _remove(self, slot: SequenceSlot, status: FinishStatus) -> Finished:
        slot.status = status
        if self._running.pop(slot.seq_id, None) is None:
            self._waiting.remove(slot)
        return Finished(slot.seq_id, status, slot.output_tokens)
