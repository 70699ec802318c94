"""form_batch's similarity limit: with grouping, only texts of similar length share a batch."""

from __future__ import annotations

from textserve.core.batcher import SIMILAR_SLACK_TOKENS, form_batch
from textserve.core.config import BatcherConfig


def test_without_a_ratio_the_contract_is_unchanged() -> None:
    lengths = [12, 240, 13, 250, 11, 245]
    assert form_batch(lengths, 64, 100_000, True) == [0, 1, 2, 3, 4, 5]
    assert form_batch(lengths, 64, 100_000, True, None) == [0, 1, 2, 3, 4, 5]


def test_short_texts_do_not_ride_in_a_long_batch() -> None:
    lengths = [240, 12, 230, 13, 250, 11]
    assert form_batch(lengths, 64, 100_000, True, 2.0) == [0, 2, 4]
    assert form_batch([12, 240, 13, 250, 11, 50], 64, 100_000, True, 2.0) == [0, 2, 4]


def test_similar_means_within_the_ratio_plus_a_few_tokens() -> None:
    assert form_batch([100, 208, 209], 8, 10_000, True, 2.0) == [0, 1]  # 2 x 100 + 8
    assert form_batch(
        [3, 3 + SIMILAR_SLACK_TOKENS + 3, 3 + SIMILAR_SLACK_TOKENS + 4], 8, 10_000, True, 2.0
    ) == [
        0,
        1,
    ]


def test_oldest_still_always_runs_and_budgets_still_bind() -> None:
    assert form_batch([500, 5], 8, 100, True, 2.0) == [0]
    assert len(form_batch([240] * 20, 64, 1024, True, 2.0)) == 4
    assert len(form_batch([12] * 100, 64, 1024, True, 2.0)) == 64


def test_fifo_ignores_the_ratio() -> None:
    assert form_batch([12, 240, 13], 8, 10_000, False, 2.0) == [0, 1, 2]


def test_the_batcher_uses_the_configured_ratio() -> None:
    assert BatcherConfig().group_length_ratio == 2.0
    assert BatcherConfig(group_length_ratio=0).group_length_ratio == 0  # 0: no limit


def test_a_dissimilar_text_is_skipped_not_the_end_of_the_search() -> None:
    # 45 is closer to 100 than 160 is, but not similar (100 > 2 x 45 + 8); 160 is (<= 2 x 100 + 8).
    assert form_batch([100, 45, 160], 8, 10_000, True, 2.0) == [0, 2]


def test_grouping_skips_a_text_over_the_token_budget_and_takes_a_later_one_that_fits() -> None:
    # 35 is the closest to 20 but 2 x 35 = 70 > 60 padded tokens; 4 still fits (2 x 20 = 40).
    assert form_batch([20, 35, 4], 8, 60, True) == [0, 2]


def test_fifo_stops_at_the_first_text_over_the_token_budget() -> None:
    assert form_batch([10, 10, 10, 1], 8, 20, False) == [0, 1]
