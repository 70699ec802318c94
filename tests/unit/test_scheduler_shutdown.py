"""The generation scheduler's shutdown path: every sequence ends with the status it was given."""

from __future__ import annotations

from textserve.generation.scheduler import FinishStatus, Scheduler, SchedulerLimits, SequenceSlot


def test_finish_all_ends_every_sequence_with_the_given_status() -> None:
    scheduler = Scheduler(
        SchedulerLimits(max_running=1, max_waiting=4, kv_budget_tokens=100, max_prefill_tokens=100)
    )
    for seq_id in (1, 2, 3):
        scheduler.add(SequenceSlot(seq_id, prompt_tokens=5, max_new_tokens=5))
    assert scheduler.schedule(0.0).prefill == [1]
    ended = scheduler.finish_all(FinishStatus.ABORTED)
    assert [(f.seq_id, f.status) for f in ended] == [
        (1, FinishStatus.ABORTED),
        (2, FinishStatus.ABORTED),
        (3, FinishStatus.ABORTED),
    ]
    reported = scheduler.schedule(0.0).finished
    assert [(f.seq_id, f.status) for f in reported] == [(f.seq_id, f.status) for f in ended]
