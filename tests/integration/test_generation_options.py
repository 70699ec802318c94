"""Generation options end to end over gRPC on loopback: structured output, logprobs and n.

A tiny random GPT-2 (built here from a config, byte-level BPE tokenizer) served by the real
generation service. Structured output is checked by validating what the model produced
(`jsonschema`, `re.fullmatch`); logprobs against a separate forward pass of the same weights
with transformers; n by reproducing each sequence alone with its documented seed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import torch
from textserve.core.config import ModelConfig
from textserve.generation.config import GenerationServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import generation_pb2, generation_pb2_grpc

from tests.support import loopback_server, start_host

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "count"],
}
PROMPT = "Answer in JSON: is the sky blue?"


@dataclass
class Served:
    host: ServiceHost
    address: str
    tokenizer: Any
    model: Any


def _model(path: Path) -> Path:
    from textserve.runtime.random_lm import byte_level_tokenizer, save_random_model
    from transformers import GPT2Config

    tokenizer = byte_level_tokenizer(chat_template=None)
    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return save_random_model(path, config, tokenizer, seed=17)


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    from textserve.generation.app import GenerationApp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model(tmp_path_factory.mktemp("models") / "tiny-options")
    config = GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(path=str(path), backend="torch", device="cpu"),
        cache_enabled=False,
        max_new_tokens_limit=128,
        max_running_sequences=64,
        max_n=12,
    )
    host = await start_host([GenerationApp(config)])
    yield Served(
        host,
        f"127.0.0.1:{host.port_of('generation')}",
        AutoTokenizer.from_pretrained(str(path)),
        AutoModelForCausalLM.from_pretrained(str(path)).eval(),
    )
    await host.stop(grace=1.0)


def request(
    prompt: str = PROMPT, response_format: Any = None, **params: Any
) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=prompt, params=generation_pb2.SamplingParams(**params), response_format=response_format
    )


def json_schema(schema: Any) -> generation_pb2.ResponseFormat:
    return generation_pb2.ResponseFormat(
        type=generation_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(schema)
    )


async def generate(served: Served, *requests: generation_pb2.GenerateRequest) -> list[Any]:
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return list(await asyncio.gather(*(stub.Generate(r, timeout=120) for r in requests)))


async def stream(served: Served, req: generation_pb2.GenerateRequest) -> list[Any]:
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return [message async for message in stub.GenerateStream(req, timeout=120)]


def reference_greedy(served: Served, prompt: str, max_new_tokens: int) -> list[int]:
    ids = served.tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        out = served.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=served.tokenizer.pad_token_id,
        )
    return [int(i) for i in out[0, len(ids) :]]


# --- structured output ----------------------------------------------------------------
async def test_100_samples_under_a_json_schema_all_validate(served: Served) -> None:
    """Temperature 1, ten requests of n=10 at once: every sample ends (EOS) with valid JSON; an
    unconstrained greedy request in the same batches still equals generate() alone."""
    constrained = [
        request(response_format=json_schema(SCHEMA), temperature=1.0, n=10, seed=100 * i, max_new_tokens=64)
        for i in range(10)
    ]
    plain = request("Hello world", temperature=0.0, max_new_tokens=24, ignore_eos=True)
    *results, greedy = await generate(served, *constrained, plain)
    samples = [choice for result in results for choice in result.choices]
    assert len(samples) == 100
    for choice in samples:
        assert choice.finish_reason == generation_pb2.FINISH_REASON_EOS, choice.text
        jsonschema.validate(json.loads(choice.text), SCHEMA)
    assert len({choice.text for choice in samples}) > 10  # really sampled
    assert list(greedy.token_ids) == reference_greedy(served, "Hello world", 24)


async def test_regex_constrains_the_whole_output(served: Served) -> None:
    fmt = generation_pb2.ResponseFormat(
        type=generation_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=r"(yes|no), [a-z]{2,5} [0-9]{1,3}\."
    )
    (result,) = await generate(served, request(response_format=fmt, temperature=1.0, n=8, seed=3))
    for choice in result.choices:
        assert choice.finish_reason == generation_pb2.FINISH_REASON_EOS
        assert re.fullmatch(r"(yes|no), [a-z]{2,5} [0-9]{1,3}\.", choice.text), choice.text


async def test_json_object_output_is_an_object(served: Served) -> None:
    fmt = generation_pb2.ResponseFormat(type=generation_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    (result,) = await generate(
        served, request(response_format=fmt, temperature=1.0, n=6, seed=5, max_new_tokens=40)
    )
    for choice in result.choices:
        assert choice.text.startswith("{")
        if choice.finish_reason == generation_pb2.FINISH_REASON_EOS:
            assert isinstance(json.loads(choice.text), dict)


async def test_constrained_stream_equals_unary(served: Served) -> None:
    req = request(response_format=json_schema(SCHEMA), temperature=1.0, seed=11, max_new_tokens=64)
    (unary,) = await generate(served, req)
    messages = await stream(served, req)
    assert "".join(m.text_delta for m in messages) == unary.text
    assert messages[-1].finish_reason == generation_pb2.FINISH_REASON_EOS
    jsonschema.validate(json.loads(unary.text), SCHEMA)


@pytest.mark.parametrize(
    ("req", "field", "words"),
    [
        (
            request(response_format=json_schema({"type": "nope"})),
            "response_format.json_schema",
            "JSON Schema",
        ),
        (
            request(response_format=generation_pb2.ResponseFormat(type=2, json_schema="{not json")),
            "response_format.json_schema",
            "not valid JSON",
        ),
        (
            request(response_format=generation_pb2.ResponseFormat(type=2, json_schema="[1]")),
            "response_format.json_schema",
            "JSON object",
        ),
        (
            request(response_format=generation_pb2.ResponseFormat(type=3, regex="(ab")),
            "response_format.regex",
            "regular expression",
        ),
        (request(response_format=generation_pb2.ResponseFormat(type=3)), "response_format.regex", "empty"),
        (request(response_format=generation_pb2.ResponseFormat(type=9)), "response_format.type", "unknown"),
        (request(n=13), "params.n", "max_n=12"),
        (request(logprobs=True, top_logprobs=21), "params.top_logprobs", "max_top_logprobs=20"),
        (request(top_logprobs=2), "params.top_logprobs", "logprobs=true"),
    ],
)
async def test_bad_options_are_invalid_argument(
    served: Served, req: generation_pb2.GenerateRequest, field: str, words: str
) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(req, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":"), caught.value.details()
    assert words in caught.value.details()


# --- logprobs -------------------------------------------------------------------------
def forward_logprobs(served: Served, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax of one full forward over prompt + generated: row i is the distribution of
    generated token i."""
    ids = torch.tensor([prompt_ids + generated])
    with torch.inference_mode():
        logits = served.model(ids).logits[0].float()
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start : start + len(generated)], dim=-1)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
async def test_logprobs_equal_a_separate_forward_pass(served: Served, temperature: float) -> None:
    """Several prompts batched together (left padding, joins): every token's logprob and its
    top-5 equal log_softmax of a plain transformers forward within 1e-4."""
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog.", "a", "Numbers: 1 2 3"]
    reqs = [
        request(
            p,
            temperature=temperature,
            seed=9,
            max_new_tokens=12,
            ignore_eos=True,
            logprobs=True,
            top_logprobs=5,
        )
        for p in prompts
    ]
    results = await generate(served, *reqs)
    for prompt, result in zip(prompts, results, strict=True):
        generated = list(result.token_ids)
        assert len(result.logprobs) == len(generated) == 12
        expected = forward_logprobs(served, served.tokenizer(prompt)["input_ids"], generated)
        for position, (token, entry) in enumerate(zip(generated, result.logprobs, strict=True)):
            assert entry.token_id == token
            assert entry.token == served.tokenizer.decode([token])
            assert abs(entry.logprob - float(expected[position, token])) < 1e-4
            top = expected[position].topk(5)
            assert [t.token_id for t in entry.top_logprobs] == top.indices.tolist()
            for item, value in zip(entry.top_logprobs, top.values.tolist(), strict=True):
                assert abs(item.logprob - value) < 1e-4
        if temperature == 0.0:
            assert entry.top_logprobs[0].token_id == entry.token_id  # greedy picks the top token


async def test_streamed_logprobs_match_unary(served: Served) -> None:
    req = request(
        "Hello world", temperature=0.0, max_new_tokens=10, ignore_eos=True, logprobs=True, top_logprobs=2
    )
    (unary,) = await generate(served, req)
    messages = await stream(served, req)
    streamed = [entry for m in messages for entry in m.logprobs]
    assert [e.token_id for e in streamed] == list(unary.token_ids)
    assert [e.logprob for e in streamed] == [e.logprob for e in unary.logprobs]
    assert all(len(m.logprobs) == len(m.token_ids) for m in messages)


async def test_no_logprobs_unless_asked(served: Served) -> None:
    (result,) = await generate(served, request("Hello", max_new_tokens=4))
    assert not result.logprobs and not result.choices[0].logprobs


# --- n --------------------------------------------------------------------------------
async def test_n_is_reproducible_with_a_seed_and_counts_the_prompt_once(served: Served) -> None:
    req = request(temperature=1.0, n=4, seed=42, max_new_tokens=10, ignore_eos=True)
    first, second = await generate(served, req, req)
    prompt_tokens = len(served.tokenizer(PROMPT)["input_ids"])
    for result in (first, second):
        assert [c.index for c in result.choices] == [0, 1, 2, 3]
        assert result.usage.input_tokens == prompt_tokens
        assert result.usage.output_tokens == sum(len(c.token_ids) for c in result.choices) == 40
        assert result.text == result.choices[0].text
    assert [list(c.token_ids) for c in first.choices] == [list(c.token_ids) for c in second.choices]
    assert len({tuple(c.token_ids) for c in first.choices}) > 1
    # Sequence i is the sequence a single request seeded with seed + i gives.
    alone = await generate(
        served, *(request(temperature=1.0, seed=42 + i, max_new_tokens=10, ignore_eos=True) for i in range(4))
    )
    assert [list(r.token_ids) for r in alone] == [list(c.token_ids) for c in first.choices]


async def test_n_streamed_by_index(served: Served) -> None:
    req = request(temperature=1.0, n=3, seed=8, max_new_tokens=8, ignore_eos=True, logprobs=True)
    (unary,) = await generate(served, req)
    messages = await stream(served, req)
    for choice in unary.choices:
        own = [m for m in messages if m.index == choice.index]
        assert [t for m in own for t in m.token_ids] == list(choice.token_ids)
        assert "".join(m.text_delta for m in own) == choice.text
        assert own[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert len([e for m in own for e in m.logprobs]) == 8
    assert [m.HasField("usage") for m in messages].count(True) == 1 and messages[-1].HasField("usage")
    assert messages[-1].usage.input_tokens == unary.usage.input_tokens
    assert messages[-1].usage.output_tokens == 24


async def test_info_reports_the_option_limits(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        info = await stub.GenerationInfo(generation_pb2.GenerationInfoRequest(), timeout=30)
    assert info.max_n == 12 and info.max_top_logprobs == 20
