"""Chooses one batch budget for a mixed queue from a measured curve, by simulating the queue.

A budget is the batcher's own `BatchBudget` (max_batch_size, max_batch_tokens; candidates
keep the default source, `tune` marks the chosen one); the batcher's `form_batch` fills a batch
until either would be passed, counting padded tokens (batch size x longest text). So one
token budget gives every text length its own batch size: about max_batch_tokens / length.
Which budget is best for a mix of lengths depends on the whole curve, so each candidate
is scored by replaying a saturated queue (`concurrency` texts in flight, lengths drawn
from the mix) through the real `form_batch`, each batch costing the latency the curve
predicts. Candidates that allow a batch of two or more texts slower than the latency
ceiling are out (a single text always runs, however slow);
of the rest, those within `tolerance` of the fastest are kept, and of these the fastest
whose slowest batch is as quick as any of them wins.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from textserve.core.batcher import BatchBudget, form_batch
from textserve.tuning.result import TuningPoint

# Spread of simulated text lengths around each mix length (real traffic is never one length).
_LENGTH_JITTER = 0.15


@dataclass(frozen=True)
class BudgetEstimate:
    """A budget scored on the curve."""

    budget: BatchBudget
    texts_per_second: float
    """Simulated throughput on the mix."""
    worst_batch_latency_ms: float
    """Slowest batch the budget allows for a text length of the grid or the mix."""
    within_ceiling: bool
    """Every batch it allows is within the ceiling (a single text always is)."""


@dataclass(frozen=True)
class BudgetChoice:
    """The chosen budget, every candidate scored, and each batch size with no token budget."""

    chosen: BudgetEstimate
    candidates: list[BudgetEstimate]
    fixed_sizes: list[BudgetEstimate]


class LatencyModel:
    """Per-batch latency for any (text length, batch size), interpolated from the measured curve.

    Linear in batch size between measured sizes and in length between measured lengths;
    beyond the largest measured size or length it grows in proportion; below the shortest
    measured length it stays at the shortest's latency.
    """

    def __init__(self, curve: Sequence[TuningPoint]) -> None:
        if not curve:
            raise ValueError("the tuning curve is empty")
        rows: dict[int, list[tuple[int, float]]] = {}
        for point in curve:
            rows.setdefault(point.text_tokens, []).append((point.batch_size, point.batch_latency_ms))
        self._lengths = sorted(rows)
        self._rows = {length: sorted(rows[length]) for length in self._lengths}

    def _at_length(self, length: int, size: int) -> float:
        row = self._rows[length]
        sizes = [s for s, _ in row]
        index = bisect.bisect_left(sizes, size)
        if index < len(row) and sizes[index] == size:
            return row[index][1]
        if index == 0:
            return row[0][1] * size / row[0][0]
        if index == len(row):
            return row[-1][1] * size / row[-1][0]
        (s0, l0), (s1, l1) = row[index - 1], row[index]
        return l0 + (l1 - l0) * (size - s0) / (s1 - s0)

    def latency_ms(self, text_tokens: int, batch_size: int) -> float:
        """Predicted forward time of `batch_size` texts padded to `text_tokens`."""
        lengths = self._lengths
        if text_tokens <= lengths[0]:
            return self._at_length(lengths[0], batch_size)
        if text_tokens >= lengths[-1]:
            return self._at_length(lengths[-1], batch_size) * text_tokens / lengths[-1]
        index = bisect.bisect_left(lengths, text_tokens)
        if lengths[index] == text_tokens:
            return self._at_length(text_tokens, batch_size)
        low, high = lengths[index - 1], lengths[index]
        l0, l1 = self._at_length(low, batch_size), self._at_length(high, batch_size)
        return l0 + (l1 - l0) * (text_tokens - low) / (high - low)


def simulate(
    latency: LatencyModel,
    budget: BatchBudget,
    mix: Sequence[int],
    *,
    concurrency: int,
    max_length: int,
    group_by_length: bool = True,
    length_ratio: float | None = None,
    texts: int = 1200,
    seed: int = 0,
) -> float:
    """Texts per second of a saturated queue under `budget` (closed loop, one batch at a time).

    A finished batch's texts are replaced by new ones (lengths drawn from the mix) only
    after the next batch was formed, as clients answer after the batcher moves on.
    """
    rng = random.Random(seed)

    def draw() -> int:
        length = rng.choice(mix) * rng.uniform(1.0 - _LENGTH_JITTER, 1.0 + _LENGTH_JITTER)
        return max(1, min(max_length, round(length)))

    queue = [draw() for _ in range(concurrency)]
    returning = 0
    done = 0
    elapsed_ms = 0.0
    while done < texts:
        if not queue:  # everything was in the last batch: the batcher waits for the clients
            queue = [draw() for _ in range(returning)]
            returning = 0
        chosen = form_batch(
            queue, budget.max_batch_size, budget.max_batch_tokens, group_by_length, length_ratio
        )
        picked = set(chosen)
        elapsed_ms += latency.latency_ms(max(queue[i] for i in chosen), len(chosen))
        queue = [length for i, length in enumerate(queue) if i not in picked]
        queue.extend(draw() for _ in range(returning))
        returning = len(chosen)
        done += len(chosen)
    return done / elapsed_ms * 1000.0


def batch_size_for(budget: BatchBudget, text_tokens: int) -> int:
    """Texts of one length a batch holds under the budget (at least one)."""
    return max(1, min(budget.max_batch_size, budget.max_batch_tokens // max(1, text_tokens)))


def estimate(
    latency: LatencyModel,
    budget: BatchBudget,
    *,
    mix: Sequence[int],
    lengths: Sequence[int],
    latency_ceiling_ms: float,
    concurrency: int,
    max_length: int,
    group_by_length: bool,
    length_ratio: float | None,
) -> BudgetEstimate:
    """Scores one budget: simulated throughput and its slowest batch against the ceiling."""
    worst = 0.0
    within = True
    for length in sorted(set(lengths) | set(mix)):
        size = batch_size_for(budget, length)
        batch_ms = latency.latency_ms(length, size)
        worst = max(worst, batch_ms)
        if size > 1 and batch_ms > latency_ceiling_ms:
            within = False
    throughput = simulate(
        latency,
        budget,
        mix,
        concurrency=concurrency,
        max_length=max_length,
        group_by_length=group_by_length,
        length_ratio=length_ratio,
    )
    return BudgetEstimate(budget, throughput, worst, within)


def candidate_budgets(
    lengths: Sequence[int], batch_sizes: Sequence[int], max_length: int
) -> list[BatchBudget]:
    """Every max_batch_size of the grid with every token budget that is some size x some length.

    Token budgets past size x max_length, where they no longer bind, are merged into it. A
    token budget may be below max_length: a longer text then always runs alone (the
    batcher takes the oldest text even when it is over the budget by itself).
    """
    token_values = {size * length for size in batch_sizes for length in lengths} | {max_length}
    budgets = {
        BatchBudget(size, min(tokens, size * max_length)) for size in batch_sizes for tokens in token_values
    }
    return sorted(budgets, key=lambda b: (b.max_batch_size, b.max_batch_tokens))


def choose_budget(
    curve: Sequence[TuningPoint],
    *,
    mix: Sequence[int],
    max_length: int,
    latency_ceiling_ms: float,
    concurrency: int,
    group_by_length: bool = True,
    length_ratio: float | None = None,
    tolerance: float = 0.01,
) -> BudgetChoice:
    """The fastest budget on the mix whose batches all stay within the latency ceiling."""
    latency = LatencyModel(curve)
    lengths = sorted({point.text_tokens for point in curve})
    sizes = sorted({point.batch_size for point in curve})
    score = functools.partial(
        estimate,
        latency,
        mix=mix,
        lengths=lengths,
        latency_ceiling_ms=latency_ceiling_ms,
        concurrency=concurrency,
        max_length=max_length,
        group_by_length=group_by_length,
        length_ratio=length_ratio,
    )
    scored = [
        score(budget) for budget in candidate_budgets(sorted(set(lengths) | set(mix)), sizes, max_length)
    ]
    allowed = [item for item in scored if item.within_ceiling] or [
        min(scored, key=lambda item: (item.worst_batch_latency_ms, item.budget.max_batch_tokens))
    ]
    best = max(item.texts_per_second for item in allowed)
    near = [item for item in allowed if item.texts_per_second >= best * (1.0 - tolerance)]
    quickest = min(item.worst_batch_latency_ms for item in near)
    chosen = max(
        (item for item in near if item.worst_batch_latency_ms <= quickest * 1.001),
        key=lambda item: (item.texts_per_second, -item.budget.max_batch_tokens, -item.budget.max_batch_size),
    )
    fixed = [score(BatchBudget(size, size * max_length)) for size in sizes]
    return BudgetChoice(chosen, scored, fixed)
