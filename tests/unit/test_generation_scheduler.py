"""Scheduler unit tests: fake model outputs, no torch, no threads."""

from __future__ import annotations

import pytest
from textserve.core.errors import Overloaded
from textserve.generation.scheduler import (
    FinishStatus,
    Scheduler,
    SchedulerLimits,
    SequenceSlot,
)

EOS = 0


def make(
    max_running: int = 4, max_waiting: int = 8, kv_budget_tokens: int = 1000, max_prefill_tokens: int = 1000
) -> Scheduler:
    return Scheduler(SchedulerLimits(max_running, max_waiting, kv_budget_tokens, max_prefill_tokens))


def slot(seq_id: int, prompt: int = 10, new: int = 10, **kwargs: object) -> SequenceSlot:
    return SequenceSlot(seq_id, prompt, new, eos_token_ids=frozenset({EOS}), **kwargs)  # type: ignore[arg-type]


def test_admits_in_arrival_order_up_to_max_running() -> None:
    scheduler = make(max_running=2)
    for seq_id in (1, 2, 3):
        scheduler.add(slot(seq_id))
    plan = scheduler.schedule(now=0.0)
    assert plan.prefill == [1, 2] and plan.decode == []
    assert scheduler.stats().waiting == 1
    plan = scheduler.schedule(now=0.0)
    assert plan.prefill == [] and plan.decode == [1, 2]


def test_new_sequences_join_between_decode_steps() -> None:
    scheduler = make()
    scheduler.add(slot(1))
    assert scheduler.schedule(0.0).prefill == [1]
    scheduler.update({1: 5})
    scheduler.add(slot(2))
    plan = scheduler.schedule(0.0)
    assert plan.decode == [1] and plan.prefill == [2]


def test_padded_kv_budget_makes_admission_wait() -> None:
    # Reservations: 100 + 100 = 200 padded tokens per row; the budget holds 2 rows.
    scheduler = make(kv_budget_tokens=400)
    for seq_id in (1, 2, 3):
        scheduler.add(slot(seq_id, prompt=100, new=100))
    assert scheduler.schedule(0.0).prefill == [1, 2]
    stats = scheduler.stats()
    assert stats.kv_tokens_used == 400 and stats.running == 2 and stats.waiting == 1
    for _ in range(99):
        assert scheduler.update({1: 7, 2: 7}) == []
        assert scheduler.schedule(0.0).prefill == []  # still full: 3 waits, never overcommits
    finished = scheduler.update({1: 7, 2: EOS})
    assert [(f.seq_id, f.status) for f in finished] == [(1, FinishStatus.LENGTH), (2, FinishStatus.EOS)]
    assert scheduler.stats().kv_tokens_used == 0  # freed in the same call
    assert scheduler.schedule(0.0).prefill == [3]


def test_budget_counts_rows_times_longest_reservation() -> None:
    scheduler = make(kv_budget_tokens=300)
    scheduler.add(slot(1, prompt=10, new=140))  # 150
    scheduler.add(slot(2, prompt=5, new=5))  # 10, but padded to 150 while 1 runs
    scheduler.add(slot(3, prompt=5, new=5))
    assert scheduler.schedule(0.0).prefill == [1, 2]
    assert scheduler.stats().kv_tokens_used == 300
    assert scheduler.schedule(0.0).prefill == []


def test_head_of_queue_is_not_overtaken() -> None:
    scheduler = make(kv_budget_tokens=400)
    scheduler.add(slot(1, prompt=100, new=100))
    scheduler.add(slot(2, prompt=150, new=50))  # 2 rows x 200 = 400 fits
    scheduler.add(slot(3, prompt=300, new=100))  # 3 rows x 400 > 400: must wait
    scheduler.add(slot(4, prompt=1, new=1))  # would fit, but may not jump ahead of 3
    assert scheduler.schedule(0.0).prefill == [1, 2]
    assert scheduler.schedule(0.0).prefill == []
    assert scheduler.num_waiting == 2


def test_prefill_tokens_limit_batches_prompts() -> None:
    scheduler = make(max_prefill_tokens=100)
    for seq_id in range(1, 5):
        scheduler.add(slot(seq_id, prompt=40))
    assert scheduler.schedule(0.0).prefill == [1, 2]  # 3 x 40 > 100
    assert scheduler.schedule(0.0).prefill == [3, 4]


def test_a_prompt_longer_than_the_prefill_limit_runs_alone() -> None:
    scheduler = make(max_prefill_tokens=50)
    scheduler.add(slot(1, prompt=80))
    scheduler.add(slot(2, prompt=10))
    assert scheduler.schedule(0.0).prefill == [1]
    assert scheduler.schedule(0.0).prefill == [2]


def test_eos_is_ignored_when_asked() -> None:
    scheduler = make()
    scheduler.add(slot(1, new=3, ignore_eos=True))
    scheduler.schedule(0.0)
    assert scheduler.update({1: EOS}) == []
    assert scheduler.update({1: EOS}) == []
    assert [f.status for f in scheduler.update({1: EOS})] == [FinishStatus.LENGTH]


def test_finish_frees_at_once_and_is_reported_in_the_next_plan() -> None:
    scheduler = make()
    scheduler.add(slot(1))
    scheduler.add(slot(2))
    scheduler.schedule(0.0)
    done = scheduler.finish([1], FinishStatus.STOPPED)
    assert [(f.seq_id, f.status) for f in done] == [(1, FinishStatus.STOPPED)]
    assert list(scheduler.running) == [2]
    assert scheduler.update({1: 5, 2: 5}) == []  # a late token of a finished sequence is ignored
    plan = scheduler.schedule(0.0)
    assert [(f.seq_id, f.status) for f in plan.finished] == [(1, FinishStatus.STOPPED)]
    assert plan.decode == [2]
    assert scheduler.finish([1], FinishStatus.ABORTED) == []  # already finished


def test_abort_of_a_waiting_sequence() -> None:
    scheduler = make(max_running=1)
    scheduler.add(slot(1))
    scheduler.add(slot(2))
    scheduler.schedule(0.0)
    scheduler.finish([2], FinishStatus.ABORTED)
    assert scheduler.num_waiting == 0
    assert [f.status for f in scheduler.schedule(0.0).finished] == [FinishStatus.ABORTED]


def test_deadlines_expire_waiting_and_running_sequences() -> None:
    scheduler = make(max_running=1)
    scheduler.add(slot(1, deadline=10.0))
    scheduler.add(slot(2, deadline=5.0))
    scheduler.add(slot(3))
    assert scheduler.schedule(now=1.0).prefill == [1]
    plan = scheduler.schedule(now=6.0)
    assert [(f.seq_id, f.status) for f in plan.finished] == [(2, FinishStatus.EXPIRED)]
    plan = scheduler.schedule(now=11.0)
    assert [(f.seq_id, f.status) for f in plan.finished] == [(1, FinishStatus.EXPIRED)]
    assert plan.prefill == [3] and plan.decode == []


def test_full_waiting_queue_is_overloaded_at_once() -> None:
    scheduler = make(max_waiting=2)
    scheduler.add(slot(1))
    scheduler.add(slot(2))
    with pytest.raises(Overloaded, match="max_waiting_sequences=2"):
        scheduler.add(slot(3))


def test_a_sequence_over_the_whole_budget_is_refused() -> None:
    scheduler = make(kv_budget_tokens=100)
    assert scheduler.check_fits(60, 40) is None
    assert "kv_budget_tokens=100" in (scheduler.check_fits(60, 41) or "")
    with pytest.raises(ValueError, match="kv_budget_tokens=100"):
        scheduler.add(slot(1, prompt=60, new=41))


def test_finish_all_ends_everything() -> None:
    scheduler = make(max_running=1)
    scheduler.add(slot(1))
    scheduler.add(slot(2))
    scheduler.schedule(0.0)
    assert {f.seq_id for f in scheduler.finish_all(FinishStatus.ABORTED)} == {1, 2}
    assert scheduler.stats().running == 0 and scheduler.stats().waiting == 0
    assert scheduler.has_work  # the finished ones are still to be reported
    scheduler.schedule(0.0)
    assert not scheduler.has_work
