"""Structured output's pieces with the built-in byte-level tokenizer: the grammar cache, the token
mask a step applies, and a constrained row next to a free one in one engine step."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from textserve.core.errors import InvalidInput
from textserve.generation.engine import EngineRequest, GenerationEngine, SequenceEvent
from textserve.generation.sampling import SamplingConfig, SequenceSampler, sample_step
from textserve.generation.scheduler import Scheduler, SchedulerLimits
from textserve.generation.structured import FormatKind, GrammarCompiler, ResponseFormat, mask_logits
from textserve.runtime.random_lm import byte_level_tokenizer

DIGITS = ResponseFormat(FormatKind.REGEX, "[0-9]{4}")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_level_tokenizer(chat_template=None)


@pytest.fixture()
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer), frozenset({int(tokenizer.eos_token_id)}), cache_size=2)


def test_a_format_is_compiled_once_and_the_cache_is_lru(compiler: GrammarCompiler) -> None:
    a, b, c = DIGITS, ResponseFormat(FormatKind.JSON_OBJECT), ResponseFormat(FormatKind.REGEX, "x+")
    first = compiler.compile(a)
    assert compiler.compile(ResponseFormat(FormatKind.REGEX, "[0-9]{4}")) is first
    compiler.compile(b)
    compiler.compile(a)  # a is now the most recent, so c evicts b
    compiler.compile(c)
    assert compiler.compiled == 3
    assert compiler.compile(a) is first and compiler.compiled == 3
    compiler.compile(b)
    assert compiler.compiled == 4


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (ResponseFormat(FormatKind.JSON_SCHEMA, '{"type": 3}'), "response_format.json_schema"),
        (ResponseFormat(FormatKind.JSON_SCHEMA, "true"), "response_format.json_schema"),
        (ResponseFormat(FormatKind.REGEX, "[a-"), "response_format.regex"),
    ],
)
def test_bad_formats_name_the_field(compiler: GrammarCompiler, fmt: ResponseFormat, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        compiler.compile(fmt)
    assert caught.value.field == field
    assert "/project/" not in str(caught.value)  # xgrammar's log prefix is dropped


def test_mask_touches_only_constrained_rows(compiler: GrammarCompiler, tokenizer: Any) -> None:
    logits = torch.randn(3, len(tokenizer), generator=torch.Generator().manual_seed(0))
    masked = mask_logits(logits, [1], [compiler.compile(DIGITS).constraint()])
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    allowed = {int(i) for i in torch.nonzero(torch.isfinite(masked[1])).flatten()}
    assert allowed and all(tokenizer.decode([i]).isdigit() for i in allowed)


def test_sampling_follows_the_grammar_to_its_end(compiler: GrammarCompiler, tokenizer: Any) -> None:
    sampler = SequenceSampler(
        SamplingConfig(temperature=1.0, seed=1), len(tokenizer), "cpu", grammar=compiler.compile(DIGITS)
    )
    generator = torch.Generator().manual_seed(1)
    tokens: list[int] = []
    while not sampler.constraint_done:
        step = sample_step(torch.randn(1, len(tokenizer), generator=generator), [sampler], [()])
        tokens += step.tokens
        assert len(tokens) < 10
    assert tokens[-1] == tokenizer.eos_token_id
    assert len(tokenizer.decode(tokens, skip_special_tokens=True)) == 4


def test_constrained_and_free_rows_in_one_engine_step(compiler: GrammarCompiler, tokenizer: Any) -> None:
    """A greedy free row batched with a constrained one produces what it produces alone; the
    constrained row ends (EOS) with a valid JSON object once its grammar is complete."""
    from textserve.runtime.random_lm import random_causal_lm
    from transformers import GPT2Config

    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = random_causal_lm(config, seed=5)
    schema = ResponseFormat(
        FormatKind.JSON_SCHEMA,
        json.dumps({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}),
    )

    def run(*requests: EngineRequest) -> list[SequenceEvent]:
        events: list[SequenceEvent] = []
        engine = GenerationEngine(
            model,
            tokenizer,
            "cpu",
            len(tokenizer),
            Scheduler(SchedulerLimits(8, 8, 4096, 4096)),
            events.extend,
            service="test",
            model_name="tiny",
            eos_token_ids=frozenset({int(tokenizer.eos_token_id)}),
        )
        for request in requests:
            engine.submit(request)
        with torch.inference_mode():
            for _ in range(30):
                engine.step()
                if not engine.scheduler.has_work:
                    break
        return events

    ids = tokenizer("Hello there")["input_ids"]
    free = EngineRequest(1, ids, 12, SamplingConfig(), ignore_eos=True)
    alone = [t for e in run(free) for t in e.token_ids]
    grammar = compiler.compile(schema)
    events = run(free, EngineRequest(2, ids, 30, SamplingConfig(temperature=1.0, seed=3), grammar=grammar))
    assert [t for e in events if e.seq_id == 1 for t in e.token_ids] == alone
    constrained = [e for e in events if e.seq_id == 2]
    assert constrained[-1].finish is not None and constrained[-1].finish.value == "eos"
    assert isinstance(json.loads("".join(e.text for e in constrained))["a"], bool)


def test_n_sequences_are_queued_all_or_none(tokenizer: Any) -> None:
    from textserve.core.errors import Overloaded
    from textserve.runtime.random_lm import random_causal_lm
    from transformers import GPT2Config

    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2, eos_token_id=eos
    )
    scheduler = Scheduler(SchedulerLimits(8, 3, 4096, 4096))
    engine = GenerationEngine(
        random_causal_lm(config, seed=1),
        tokenizer,
        "cpu",
        len(tokenizer),
        scheduler,
        lambda _: None,
        service="test",
        model_name="tiny",
    )
    ids = tokenizer("Hi")["input_ids"]
    engine.submit_all([EngineRequest(i, ids, 4, SamplingConfig()) for i in (1, 2)])
    with pytest.raises(Overloaded):
        engine.submit_all([EngineRequest(i, ids, 4, SamplingConfig()) for i in (3, 4)])
    assert scheduler.num_waiting == 2
    engine.submit_all([EngineRequest(5, ids, 4, SamplingConfig())])
    assert scheduler.num_waiting == 3
