"""The engine step by step (no worker thread) with a tiny random GPT-2 built here, plus sampling."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from textserve.generation.engine import EngineRequest, GenerationEngine, PrefillPacer, SequenceEvent
from textserve.generation.prefix_cache import PrefixCache
from textserve.generation.sampling import SamplingConfig, SequenceSampler, sample_next
from textserve.generation.scheduler import FinishStatus, Scheduler, SchedulerLimits


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from textserve.runtime.random_lm import byte_level_tokenizer, random_causal_lm
    from transformers import GPT2Config

    tokenizer = byte_level_tokenizer(chat_template=None)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2
    )
    return random_causal_lm(config, seed=3), tokenizer


class Harness:
    """An engine driven by hand, collecting its events."""

    def __init__(
        self,
        tiny: tuple[Any, Any],
        max_running: int = 8,
        kv_budget_tokens: int = 4096,
        max_batched_tokens: int = 512,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        model, tokenizer = tiny
        self.tokenizer = tokenizer
        self.events: list[SequenceEvent] = []
        self.scheduler = Scheduler(SchedulerLimits(max_running, 64, kv_budget_tokens, 4096))
        self.engine = GenerationEngine(
            model,
            tokenizer,
            "cpu",
            len(tokenizer),
            self.scheduler,
            self.events.extend,
            service="generation-test",
            model_name="tiny-engine",
            eos_token_ids=frozenset({int(tokenizer.eos_token_id)}),
            max_batched_tokens=max_batched_tokens,
            prefix_cache=prefix_cache,
        )

    def submit(self, seq_id: int, prompt: str, max_new: int = 8, **kwargs: Any) -> None:
        ids = self.tokenizer(prompt)["input_ids"]
        sampling = kwargs.pop("sampling", SamplingConfig())
        self.engine.submit(EngineRequest(seq_id, ids, max_new, sampling, ignore_eos=True, **kwargs))

    def step(self) -> None:
        with torch.inference_mode():
            self.engine.step()

    def of(self, seq_id: int) -> list[SequenceEvent]:
        return [e for e in self.events if e.seq_id == seq_id]


@pytest.fixture
def grows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each KV buffer copy of the batch cache (`_AppendLayer._grow`), by layer id, as it happens."""
    from textserve.generation import kv_batch

    copies: list[int] = []
    grow = kv_batch._AppendLayer._grow

    def counted(self: Any, *args: Any) -> None:
        copies.append(id(self))
        grow(self, *args)

    monkeypatch.setattr(kv_batch._AppendLayer, "_grow", counted)
    return copies


def test_sequences_join_and_finish_independently(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny)
    h.submit(1, "Hello world", max_new=3)
    h.step()
    h.submit(2, "Another prompt", max_new=2)
    h.step()
    assert h.engine.batch.rows == [1, 2]
    h.step()  # 1 reaches 3 tokens, 2 reaches 2: both leave in this step
    assert h.engine.batch.rows == [1, 2]  # rows are dropped before the next forward
    assert h.scheduler.stats().running == 0 and h.scheduler.stats().kv_tokens_used == 0
    for seq_id, count in ((1, 3), (2, 2)):
        events = h.of(seq_id)
        assert sum(len(e.token_ids) for e in events) == count
        assert events[-1].finish is FinishStatus.LENGTH and events[-1].output_tokens == count
        assert events[0].first_token_seconds is not None
    h.submit(3, "third", max_new=1)
    h.step()
    assert h.engine.batch.rows == [3]


def test_abort_frees_the_slot_at_once_and_the_row_next_step(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny)
    h.submit(1, "Hello world", max_new=50)
    h.submit(2, "Other", max_new=50)
    h.step()
    h.engine.abort(1)
    assert list(h.scheduler.running) == [2]
    assert h.scheduler.stats().kv_tokens_used == len(h.tokenizer("Other")["input_ids"]) + 50
    h.step()
    assert h.engine.batch.rows == [2]
    assert h.of(1)[-1].finish is FinishStatus.ABORTED
    tokens_of_1 = sum(len(e.token_ids) for e in h.of(1))
    h.step()
    assert sum(len(e.token_ids) for e in h.of(1)) == tokens_of_1  # nothing more computed for 1


def test_expired_while_waiting_is_never_computed(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny, max_running=1)
    h.submit(1, "Hello world", max_new=20)
    h.submit(2, "late", max_new=5, deadline=0.0)  # monotonic 0.0 is long past
    h.step()
    events = h.of(2)
    assert len(events) == 1 and events[0].finish is FinishStatus.EXPIRED and events[0].token_ids == []
    assert h.scheduler.num_waiting == 0


def test_expired_while_running_ends_the_sequence(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny)
    h.submit(1, "Hello world", max_new=20, deadline=10.0**12)
    h.step()
    h.scheduler._running[1].deadline = 0.0  # the deadline passes between two steps
    h.step()
    assert h.of(1)[-1].finish is FinishStatus.EXPIRED
    assert h.engine.batch.rows == [] and h.scheduler.stats().running == 0


def test_stop_sequence_finishes_and_frees(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny)
    h.submit(1, "Hello world", max_new=30)
    for _ in range(30):
        h.step()
    text = "".join(e.text for e in h.of(1))
    stop = text[4:6]
    h.submit(2, "Hello world", max_new=30, stop=(stop,))
    for _ in range(30):
        h.step()
    events = h.of(2)
    assert events[-1].finish is FinishStatus.STOPPED
    assert "".join(e.text for e in events) == text[: text.find(stop)]
    assert h.scheduler.stats().running == 0


def test_a_failed_forward_fails_its_sequences_and_the_engine_carries_on(tiny: tuple[Any, Any]) -> None:
    h = Harness(tiny)
    h.submit(1, "Hello world", max_new=5)
    original = h.engine.batch.prefill

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    h.engine.batch.prefill = broken  # type: ignore[method-assign]
    h.step()
    assert h.of(1)[-1].error is not None and "boom" in (h.of(1)[-1].error or "")
    assert h.scheduler.stats().running == 0
    h.engine.batch.prefill = original  # type: ignore[method-assign]
    h.submit(2, "Hello world", max_new=2)
    h.step()
    h.step()
    assert h.of(2)[-1].finish is FinishStatus.LENGTH


def test_seeded_sampling_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    config = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, seed=123)
    alone = [SequenceSampler(config, 100, "cpu").choose(logits[2], []) for _ in range(3)]
    samplers = [SequenceSampler(SamplingConfig(temperature=1.0, seed=i), 100, "cpu") for i in range(4)]
    samplers[2] = SequenceSampler(config, 100, "cpu")
    together = sample_next(logits, samplers, [[]] * 4)[2]
    assert alone == [together] * 3


def test_top_k_one_is_greedy_and_greedy_is_argmax() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    greedy = [SequenceSampler(SamplingConfig(), 50, "cpu") for _ in range(3)]
    top1 = [SequenceSampler(SamplingConfig(temperature=2.0, top_k=1, seed=9), 50, "cpu") for _ in range(3)]
    expected = logits.argmax(dim=-1).tolist()
    assert sample_next(logits, greedy, [[]] * 3) == expected
    assert sample_next(logits, top1, [[]] * 3) == expected


def test_repetition_penalty_matches_transformers() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(2)
    logits = torch.randn(50)
    history = [int(logits.argmax())]  # the favourite token was already produced
    sampler = SequenceSampler(SamplingConfig(repetition_penalty=5.0), 50, "cpu")
    penalised = RepetitionPenaltyLogitsProcessor(5.0)(torch.tensor([history]), logits.clone().unsqueeze(0))
    assert int(penalised.argmax()) != history[0]  # the penalty changed the choice
    assert sampler.choose(logits, history) == int(penalised.argmax())


def test_full_waiting_queue_is_rejected_at_once(tiny: tuple[Any, Any]) -> None:
    from textserve.core.errors import Overloaded

    h = Harness(tiny)
    h.scheduler.limits = SchedulerLimits(
        max_running=1, max_waiting=2, kv_budget_tokens=4096, max_prefill_tokens=4096
    )
    for seq_id in (1, 2):
        h.submit(seq_id, "Hello")
    with pytest.raises(Overloaded, match="max_waiting_sequences=2"):
        h.submit(3, "Hello")
    h.step()  # 1 is admitted, which makes room for one more
    h.submit(3, "Hello")


def test_padded_batch_joins_and_drops_match_generate_alone(tiny: tuple[Any, Any]) -> None:
    """Rows joining at different steps, rows leaving early, padding cut: every sequence's greedy
    tokens equal generate() on its prompt alone."""
    from textserve.generation.kv_batch import PaddedKVBatch

    model, tokenizer = tiny
    prompts = [tokenizer(f"prompt {i}: " + "the quick brown fox " * (i % 4))["input_ids"] for i in range(12)]
    lengths = [6 + (i % 5) * 3 for i in range(12)]  # tokens wanted per sequence
    with torch.inference_mode():
        expected = [
            model.generate(
                torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(p) :].tolist()
            for p, n in zip(prompts, lengths, strict=True)
        ]
        batch = PaddedKVBatch(model, "cpu")
        produced: dict[int, list[int]] = {i: [] for i in range(12)}
        waves = {0: [0, 1, 2, 3], 2: [4, 5, 6], 5: [7, 8, 9, 10, 11]}
        for step in range(40):
            rows = list(batch.rows)
            if rows:
                logits = batch.decode([produced[i][-1] for i in rows])
                for row, seq in enumerate(rows):
                    produced[seq].append(int(logits[row].argmax()))
            new = waves.get(step, [])
            if new:
                logits = batch.prefill(new, [prompts[i] for i in new])
                for row, seq in enumerate(new):
                    produced[seq].append(int(logits[row].argmax()))
            batch.keep({i for i in batch.rows if len(produced[i]) < lengths[i]})
    assert [produced[i] for i in range(12)] == expected
    assert batch.rows == [] and batch.width == 0


def _alone(model: Any, prompt: list[int], new: int) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return [int(i) for i in output[0, len(prompt) :]]


def test_prefix_reuse_and_chunked_prefill_match_generate_alone(tiny: tuple[Any, Any]) -> None:
    """Prompts sharing a prefix (reused from the prefix cache) and long prompts prefilled in
    chunks over several steps, joining a running batch in waves: every sequence's greedy tokens
    equal generate() on its prompt alone, and running sequences get a token every step."""
    model, tokenizer = tiny
    h = Harness(tiny, max_batched_tokens=24, prefix_cache=PrefixCache(1024, block_tokens=8))
    system = "You are a helpful assistant. Answer briefly: "  # shared by prompts 0-5
    prompts = [f"{system}question {i}?" for i in range(6)]
    prompts += [f"long {i}: " + "the quick brown fox jumps over " * 4 for i in range(3)]
    prompts += [prompts[6] + " and again"]  # shares the long prompt 6 (cached once 6 is prefilled)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    assert min(len(ids[i]) for i in (0, 6, 7, 8, 9)) > 24  # over the budget: chunked when others run
    new = [6 + (i % 4) * 2 for i in range(len(prompts))]
    expected = [_alone(model, p, n) for p, n in zip(ids, new, strict=True)]
    waves = {0: [0, 6], 1: [1, 2], 3: [7, 3], 5: [8, 4, 5], 12: [9]}
    tokens_before: dict[int, int] = {}
    chunked_while_decoding = False
    for step in range(60):
        for i in waves.get(step, []):
            h.submit(i, prompts[i], max_new=new[i])
        produced = {i: sum(len(e.token_ids) for e in h.of(i)) for i in range(len(prompts))}
        # Every sequence that had a token and is not done got one more in the last step.
        for i, count in tokens_before.items():
            if 0 < count < new[i]:
                assert produced[i] == count + 1, f"sequence {i} stalled at step {step}"
        tokens_before = produced
        h.step()
        chunked_while_decoding = chunked_while_decoding or bool(h.engine.batch.staged and h.engine.batch.rows)
    got = [[t for e in h.of(i) for t in e.token_ids] for i in range(len(prompts))]
    assert got == expected
    assert chunked_while_decoding
    cached = {i: max((e.cached_prompt_tokens for e in h.of(i)), default=0) for i in range(len(prompts))}
    # 1 and 2 arrive while 0 is still being prefilled (in chunks); 3-5 come later.
    assert all(cached[i] >= 32 for i in (3, 4, 5)), cached  # the system prompt was reused
    assert cached[9] >= 32 and cached[6] == 0  # the long prompt was reused by its extension
    assert h.scheduler.stats().running == 0 and h.engine.batch.staged == set()


def test_prefix_cache_is_counted_in_the_kv_budget_and_evicted_for_sequences(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    cache = PrefixCache(4096, block_tokens=8)
    h = Harness(tiny, kv_budget_tokens=120, prefix_cache=cache)
    prompt = "the quick brown fox jumps over the lazy dog " * 2  # about 20 tokens
    h.submit(1, prompt, max_new=20)
    for _ in range(25):
        h.step()
    held = cache.tokens
    assert held > 0 and h.scheduler.stats().prefix_cached_tokens == held
    assert h.scheduler.kv_room() == 120 - held
    # A sequence that needs nearly the whole budget evicts the cached blocks to fit.
    h.submit(2, "Hello", max_new=110)
    h.step()
    assert list(h.scheduler.running) == [2] and cache.tokens + h.scheduler.reserved_tokens() <= 120
    for _ in range(115):
        h.step()
    assert [t for e in h.of(2) for t in e.token_ids] == _alone(model, tokenizer("Hello")["input_ids"], 110)


def test_a_row_joining_is_written_into_spare_rows_without_copying_the_cache(tiny: tuple[Any, Any]) -> None:
    from textserve.generation.kv_batch import PaddedKVBatch

    model, tokenizer = tiny
    long_prompt, short_prompt = tokenizer("a longer first prompt")["input_ids"], tokenizer("hi")["input_ids"]
    with torch.inference_mode():
        batch = PaddedKVBatch(model, "cpu")
        first = [int(batch.prefill([1], [long_prompt])[0].argmax())]
        first.append(int(batch.decode([first[-1]])[0].argmax()))  # the layers now own grown buffers
        layer = batch._cache.layers[0]  # type: ignore[union-attr]
        buffer = layer._key_buffer.data_ptr()  # type: ignore[attr-defined]
        batch.stage(2)
        second = [int(batch.extend(2, short_prompt).argmax())]
        batch.commit(2)
        assert layer._key_buffer.data_ptr() == buffer  # type: ignore[attr-defined]
        for _ in range(3):
            logits = batch.decode([first[-1], second[-1]])
            first.append(int(logits[0].argmax()))
            second.append(int(logits[1].argmax()))
    assert first == _alone(model, long_prompt, 5) and second == _alone(model, short_prompt, 4)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_n_sequences_of_one_prompt_share_one_prefill(tiny: tuple[Any, Any], chunked: bool) -> None:
    """The n sequences of a request (submitted together, same prompt) compute the prompt once
    and fork its keys and values; each still samples its first token with its own seed, so
    sequence i equals the sequence a request seeded with 42 + i gives alone, and greedy ones
    equal generate()."""
    model, tokenizer = tiny
    prompt = "Once upon a time, in a land far away, there lived " * (3 if chunked else 1)
    ids = tokenizer(prompt)["input_ids"]
    budget = 24 if chunked else 512

    def run(requests: list[EngineRequest], together: bool) -> tuple[list[list[int]], int]:
        h = Harness(tiny, max_batched_tokens=budget)
        if chunked:  # a running stream makes the prompt go in chunks
            h.submit(99, "Hi", max_new=40)
            h.step()
        computed = h.engine.prompt_tokens_computed
        if together:
            h.engine.submit_all(requests)
        else:
            for request in requests:
                h.engine.submit(request)
        for _ in range(40):
            h.step()
        outputs = [[t for e in h.of(r.seq_id) for t in e.token_ids] for r in requests]
        assert all(e.error is None for e in h.events)
        return outputs, h.engine.prompt_tokens_computed - computed

    def requests(seeds: list[int | None]) -> list[EngineRequest]:
        return [
            EngineRequest(
                i,
                ids,
                10,
                SamplingConfig(temperature=0.0 if seed is None else 1.0, seed=seed),
                ignore_eos=True,
            )
            for i, seed in enumerate(seeds)
        ]

    if chunked:
        assert len(ids) > budget
    shared, computed = run(requests([42, 43, 44, 45]), together=True)
    assert computed == len(ids)  # once, not 4 times
    alone = [run(requests([42 + i]), together=False)[0][0] for i in range(4)]
    assert shared == alone and len({tuple(o) for o in shared}) > 1
    greedy, computed = run(requests([None, None, None]), together=True)
    assert computed == len(ids)
    assert greedy == [_alone(model, ids, 10)] * 3


def test_followers_of_an_aborted_leader_prefill_the_prompt_themselves(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    ids = tokenizer("the quick brown fox jumps over the lazy dog " * 3)["input_ids"]
    h = Harness(tiny, max_batched_tokens=24)
    h.submit(99, "Hi", max_new=40)
    h.step()
    h.engine.submit_all([EngineRequest(i, ids, 6, SamplingConfig(), ignore_eos=True) for i in range(3)])
    h.step()  # the leader (0) got a first chunk; 1 and 2 wait on it
    assert 0 in h.engine.batch.staged and not {1, 2} & set(h.engine.batch.staged)
    h.engine.abort(0)
    for _ in range(45):
        h.step()
    expected = _alone(model, ids, 6)
    assert [[t for e in h.of(i) for t in e.token_ids] for i in (1, 2)] == [expected, expected]
    assert h.of(0)[-1].finish == FinishStatus.ABORTED
    assert h.scheduler.stats().running == 0 and h.engine.batch.staged == set()


def test_prefill_pacer_sizes_prompt_work_to_a_share_of_a_decode_step() -> None:
    """While streams run, a step computes the prompt tokens that take `share` of a decode step;
    both times are measured in every step (a step less its prompt work is a decode step);
    unbounded until both are known, or with no share."""
    pacer = PrefillPacer(1.0)
    assert pacer.budget() is None
    pacer.observe(running=0, prompt_tokens=0, seconds=0.001, prompt_seconds=0.0)  # nothing to learn
    assert pacer.decode_seconds is None and pacer.prompt_token_seconds is None
    pacer.observe(running=16, prompt_tokens=0, seconds=0.010, prompt_seconds=0.0)
    assert pacer.budget() is None  # no prompt time yet
    pacer.observe(running=16, prompt_tokens=20, seconds=0.030, prompt_seconds=0.020)  # 1 ms a token
    assert pacer.decode_seconds == pytest.approx(0.010) and pacer.budget() == 10
    half = PrefillPacer(0.5)
    half.observe(running=0, prompt_tokens=50, seconds=0.050, prompt_seconds=0.050)  # no stream
    assert half.decode_seconds is None
    half.observe(running=8, prompt_tokens=0, seconds=0.008, prompt_seconds=0.0)
    assert half.budget() == 4
    # Moving averages: slower decode steps (more rows joined), measured in steps with prompt work
    # too, raise the budget; a dearer prompt token lowers it.
    pacer.observe(running=32, prompt_tokens=10, seconds=0.040, prompt_seconds=0.010)
    assert pacer.decode_seconds is not None and 0.010 < pacer.decode_seconds < 0.030
    assert pacer.budget() is not None and pacer.budget() > 10
    budget = pacer.budget()
    pacer.observe(running=32, prompt_tokens=10, seconds=pacer.decode_seconds + 0.030, prompt_seconds=0.030)
    assert pacer.budget() is not None and pacer.budget() < budget
    unbounded = PrefillPacer(None)
    unbounded.observe(running=16, prompt_tokens=0, seconds=0.010, prompt_seconds=0.0)
    unbounded.observe(running=16, prompt_tokens=20, seconds=0.030, prompt_seconds=0.020)
    assert unbounded.budget() is None


def test_the_pacer_bounds_prompt_work_while_streams_run(tiny: tuple[Any, Any]) -> None:
    """With step times measured (set here), a step that decodes a running stream prefills only
    the paced share of a new prompt (chunked), not the whole token budget; outputs unchanged."""
    model, tokenizer = tiny
    h = Harness(tiny, max_batched_tokens=512)
    h.submit(99, "Hi", max_new=30)
    h.step()
    pacer = h.engine.pacer = PrefillPacer(1.0)
    pacer.decode_seconds, pacer.prompt_token_seconds = 0.010, 0.010 / 20.5  # 20 tokens a step
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) > 40
    h.submit(1, prompt, max_new=6)
    h.step()
    assert h.engine.batch.staged_tokens(1) == 20 and h.of(99)  # one chunk; the stream got its token
    for _ in range(35):
        h.step()
    assert [t for e in h.of(1) for t in e.token_ids] == _alone(model, ids, 6)


def test_a_step_with_running_streams_adds_one_prompt_forward_at_most(tiny: tuple[Any, Any]) -> None:
    """While a stream runs, a step prefills either the whole prompts that fit together or one
    chunk, never both nor two chunks (each forward is a fixed cost the running stream waits
    for); outputs unchanged."""
    model, tokenizer = tiny
    h = Harness(tiny, max_batched_tokens=512)
    h.submit(99, "Hi", max_new=40)
    h.step()
    pacer = h.engine.pacer = PrefillPacer(1.0)
    long_text = "the quick brown fox jumps over the lazy dog " * 3
    long_ids = tokenizer(long_text)["input_ids"]
    pacer.decode_seconds, pacer.prompt_token_seconds = 0.010, 0.010 / 24.5  # 24 tokens a step
    h.submit(1, "a short one", max_new=4)
    h.submit(2, long_text, max_new=4)
    h.submit(3, long_text + "again", max_new=4)
    h.step()  # the short prompt whole; the long ones wait (no chunk beside whole prompts)
    assert h.of(1) and 2 not in h.engine.batch.staged and 3 not in h.engine.batch.staged
    pacer.decode_seconds, pacer.prompt_token_seconds = 0.010, 0.010 / 24.5
    h.step()  # one chunk of prompt 2, nothing of prompt 3
    assert h.engine.batch.staged_tokens(2) == 24 and 3 not in h.engine.batch.staged
    for _ in range(60):
        h.step()
    assert [t for e in h.of(2) for t in e.token_ids] == _alone(model, long_ids, 4)
    short_ids = tokenizer("a short one")["input_ids"]
    assert [t for e in h.of(1) for t in e.token_ids] == _alone(model, short_ids, 4)


def test_padding_cut_and_a_longer_row_joining_copy_no_cache_and_match_generate(
    tiny: tuple[Any, Any], grows: list[int]
) -> None:
    """When the longest row leaves, the padding no row needs is dropped without copying the
    cache, and a longer row joining later reuses that room on the left; every row still equals
    generate() (the running one across both, the new one from its prompt)."""
    from textserve.generation.kv_batch import PaddedKVBatch

    model, tokenizer = tiny
    text = tokenizer("the quick brown fox jumps over the lazy dog " * 8)["input_ids"]
    short, long_prompt, longer = text[:6], text[3:60], text[5:40]
    new_tokens = 8
    expected = {0: _alone(model, short, new_tokens), 2: _alone(model, longer, new_tokens)}
    with torch.inference_mode():
        batch = PaddedKVBatch(model, "cpu")
        produced: dict[int, list[int]] = {}
        logits = batch.prefill([0, 1], [short, long_prompt])
        for row, seq in enumerate(batch.rows):
            produced[seq] = [int(logits[row].argmax())]
        for _ in range(3):  # the batch's own buffers (the first decodes copy the prefill's cache)
            logits = batch.decode([produced[seq][-1] for seq in batch.rows])
            for row, seq in enumerate(batch.rows):
                produced[seq].append(int(logits[row].argmax()))
        width = batch.width
        grows.clear()
        batch.keep({0})  # the long row leaves: its padding goes, without a copy
        assert batch.width == len(short) + 3 < width and not grows
        logits = batch.prefill([2], [longer])  # longer than the short row: the room on the left
        produced[2] = [int(logits[0].argmax())]
        assert not grows and batch.width == len(longer)
        while any(len(produced[seq]) < new_tokens for seq in (0, 2)):
            logits = batch.decode([produced[seq][-1] for seq in batch.rows])
            for row, seq in enumerate(batch.rows):
                if len(produced[seq]) < new_tokens:
                    produced[seq].append(int(logits[row].argmax()))
    assert {seq: produced[seq] for seq in (0, 2)} == expected


def test_rows_joining_up_to_the_running_limit_copy_the_cache_once(
    tiny: tuple[Any, Any], grows: list[int]
) -> None:
    """A batch that knows its most rows (the scheduler's running limit) makes room for them when
    its buffers grow, so rows joining one at a time up to that limit copy no cache."""
    from textserve.generation.kv_batch import PaddedKVBatch

    model, tokenizer = tiny
    prompt = tokenizer("the quick brown fox")["input_ids"]
    with torch.inference_mode():
        batch = PaddedKVBatch(model, "cpu", max_rows=32)
        batch.prefill(list(range(16)), [prompt] * 16)
        batch.decode([prompt[0]] * 16)  # the batch's own buffers: the one copy
        grows.clear()
        for seq in range(16, 32):
            batch.prefill([seq], [prompt])
            batch.decode([prompt[0]] * len(batch.rows))
        assert len(batch.rows) == 32 and not grows
        # Within the KV budget: spare rows stop where a buffer would hold more positions than it
        # (here 16 rows of 64 positions), down to the fixed spare of 8 rows.
        small = PaddedKVBatch(model, "cpu", max_rows=32, max_tokens=16 * 64)
        small.prefill(list(range(16)), [prompt] * 16)
        small.decode([prompt[0]] * 16)
        assert small._cache is not None
        layer: Any = small._cache.layers[0]
        assert layer._key_buffer.shape[0] == 16 + 8 and layer._key_buffer.shape[-2] == 64


def test_prompts_of_very_different_lengths_join_in_one_growth_and_match_generate(
    tiny: tuple[Any, Any], grows: list[int]
) -> None:
    """A wave of prompts too different in length for one prefill group (several forwards) joins
    a running batch with at most one copy of its cache, and every row still equals generate()."""
    from textserve.generation.kv_batch import PaddedKVBatch, _length_groups

    model, tokenizer = tiny
    words = "the quick brown fox jumps over the lazy dog "
    running = [tokenizer(words)["input_ids"], tokenizer("hello " + words)["input_ids"]]
    text = tokenizer(words * 12)["input_ids"]
    wave = [text[index : index + length] for index, length in enumerate((3, 55, 5, 90, 12))]
    assert len(_length_groups([len(p) for p in wave])) >= 3
    prompts = running + wave
    new_tokens = 6
    expected = [_alone(model, p, new_tokens) for p in prompts]
    with torch.inference_mode():
        batch = PaddedKVBatch(model, "cpu")
        produced: dict[int, list[int]] = {}
        logits = batch.prefill([0, 1], running)
        for row in range(2):
            produced[row] = [int(logits[row].argmax())]
        logits = batch.decode([produced[row][-1] for row in batch.rows])
        for row, seq in enumerate(batch.rows):
            produced[seq].append(int(logits[row].argmax()))
        ids = list(range(2, 2 + len(wave)))
        grows.clear()
        logits = batch.prefill(ids, wave)
        assert len(grows) == len(set(grows)) <= len(model.transformer.h)  # one copy per layer at most
        for row, seq in enumerate(ids):
            produced[seq] = [int(logits[row].argmax())]
        while any(len(tokens) < new_tokens for tokens in produced.values()):
            logits = batch.decode([produced[seq][-1] for seq in batch.rows])
            for row, seq in enumerate(batch.rows):
                if len(produced[seq]) < new_tokens:
                    produced[seq].append(int(logits[row].argmax()))
    assert [produced[i] for i in range(len(prompts))] == expected
