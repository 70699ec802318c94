"""Choosing a batch budget from a measured curve: interpolation, simulation, the ceiling."""

from __future__ import annotations

import pytest
from textserve.core.batcher import BatchBudget
from textserve.tuning.choice import (
    LatencyModel,
    batch_size_for,
    candidate_budgets,
    choose_budget,
    simulate,
)
from textserve.tuning.result import TuningPoint

# Per-batch latency (ms) shaped like all-MiniLM-L6-v2 under onnxruntime on a 2-core CPU:
# short texts gain ~1.8x from batching, medium ~1.3x up to 16, long texts are best alone.
CPU_LIKE = {
    16: {1: 1.5, 2: 2.5, 4: 4.5, 8: 7.5, 16: 13.0, 32: 25.0, 64: 48.0},
    64: {1: 4.5, 2: 8.0, 4: 15.0, 8: 28.0, 16: 52.0, 32: 120.0, 64: 260.0},
    256: {1: 19.0, 2: 39.0, 4: 80.0, 8: 165.0, 16: 380.0},
}


def curve(table: dict[int, dict[int, float]]) -> list[TuningPoint]:
    return [
        TuningPoint(length, size, length * size, ms, size / ms * 1000.0)
        for length, row in table.items()
        for size, ms in row.items()
    ]


def test_latency_model_interpolates_and_extrapolates() -> None:
    model = LatencyModel(curve(CPU_LIKE))
    assert model.latency_ms(16, 4) == pytest.approx(4.5)
    assert model.latency_ms(16, 3) == pytest.approx(3.5)  # between sizes 2 and 4
    assert model.latency_ms(40, 1) == pytest.approx(3.0)  # halfway between 16 and 64 tokens
    assert model.latency_ms(256, 32) == pytest.approx(760.0)  # past the largest size: proportional
    assert model.latency_ms(512, 1) == pytest.approx(38.0)  # past the longest length: proportional
    assert model.latency_ms(4, 1) == pytest.approx(1.5)  # below the shortest length: clamped


def test_candidates_cover_size_times_length_and_merge_unbound_token_budgets() -> None:
    budgets = candidate_budgets([16, 256], [1, 4], max_length=256)
    assert BatchBudget(4, 64) in budgets  # 4 texts of 16 tokens
    assert BatchBudget(4, 1024) in budgets  # 4 texts of 256 tokens: the token budget no longer binds
    assert all(b.max_batch_tokens <= b.max_batch_size * 256 for b in budgets)
    assert [b for b in budgets if b.max_batch_size == 1] == [
        BatchBudget(1, 16),
        BatchBudget(1, 64),
        BatchBudget(1, 256),
    ]


def test_batch_size_for_a_length() -> None:
    budget = BatchBudget(max_batch_size=32, max_batch_tokens=512)
    assert [batch_size_for(budget, n) for n in (12, 50, 240, 600)] == [32, 10, 2, 1]


def test_tuned_budget_batches_short_texts_large_and_long_texts_small() -> None:
    choice = choose_budget(
        curve(CPU_LIKE), mix=[16, 64, 256], max_length=256, latency_ceiling_ms=100.0, concurrency=64
    )
    budget = choice.chosen.budget
    assert batch_size_for(budget, 16) >= 16
    assert batch_size_for(budget, 256) <= 2
    assert choice.chosen.within_ceiling and choice.chosen.worst_batch_latency_ms <= 100.0
    # On the mixed queue it beats every fixed max_batch_size (the fixed ones mix lengths).
    assert all(choice.chosen.texts_per_second >= fixed.texts_per_second for fixed in choice.fixed_sizes)


def test_a_tight_ceiling_gives_smaller_batches() -> None:
    loose = choose_budget(
        curve(CPU_LIKE), mix=[16, 64, 256], max_length=256, latency_ceiling_ms=100, concurrency=64
    )
    tight = choose_budget(
        curve(CPU_LIKE), mix=[16, 64, 256], max_length=256, latency_ceiling_ms=5, concurrency=64
    )
    assert tight.chosen.within_ceiling
    for length in (16, 64):
        size = batch_size_for(tight.chosen.budget, length)
        assert size == 1 or CPU_LIKE[length][size] <= 5
    assert tight.chosen.budget.max_batch_tokens <= loose.chosen.budget.max_batch_tokens


def test_a_device_where_batching_is_free_gets_big_batches() -> None:
    # GPU-like: latency barely grows with batch size, so the biggest batches win for every length.
    gpu = {n: {s: 2.0 + 0.01 * s * n / 16 for s in (1, 4, 16, 64)} for n in (16, 64, 256)}
    choice = choose_budget(
        curve(gpu), mix=[16, 64, 256], max_length=256, latency_ceiling_ms=100, concurrency=64
    )
    assert batch_size_for(choice.chosen.budget, 256) >= 16
    assert batch_size_for(choice.chosen.budget, 16) == 64


def test_simulation_counts_padding_of_mixed_batches() -> None:
    model = LatencyModel(curve(CPU_LIKE))
    mixed = dict(mix=[16, 256], concurrency=64, max_length=256)
    # Grouping without a similarity limit lets short texts ride in long batches (padded to 256).
    unlimited = simulate(model, BatchBudget(64, 16384), **mixed, length_ratio=None)  # type: ignore[arg-type]
    similar_only = simulate(model, BatchBudget(64, 16384), **mixed, length_ratio=2.0)  # type: ignore[arg-type]
    assert similar_only > 1.2 * unlimited
