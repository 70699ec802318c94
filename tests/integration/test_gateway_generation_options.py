"""The gateway's `n`, `logprobs`/`top_logprobs` and `response_format` with the official openai client.

A real generation service (the tiny random demo model) behind a real gateway on loopback.
What the HTTP side returns is checked against the service's own gRPC answer (logprobs,
choices), and structured output by validating what the model produced.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel
from textserve.core.config import ModelConfig
from textserve.gateway.server import GatewayServer
from textserve.generation.config import GenerationServiceConfig
from textserve.v1 import generation_pb2, generation_pb2_grpc, tokenizer_pb2

from tests.gateway_support import base_url, openai_client, running_gateway
from tests.support import loopback_server, start_host

MESSAGES: Any = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "boolean"}, "confidence": {"enum": ["low", "high"]}},
    "required": ["answer", "confidence"],
}


@pytest.fixture(scope="module")
async def generation_address() -> AsyncIterator[str]:
    from textserve.generation.app import GenerationApp

    config = GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(path="", backend="torch", device="cpu"),
        cache_enabled=False,
    )
    host = await start_host([GenerationApp(config)])
    yield f"127.0.0.1:{host.port_of('generation')}"
    await host.stop(grace=1.0)


@pytest.fixture(scope="module")
async def gateway(generation_address: str) -> AsyncIterator[GatewayServer]:
    async with running_gateway(generation_address=generation_address) as server:
        yield server


@pytest.fixture(scope="module")
async def model_name(generation_address: str) -> str:
    async with grpc.aio.insecure_channel(generation_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        info = await stub.GenerationInfo(generation_pb2.GenerationInfoRequest(), timeout=30)
    return str(info.model.name)


async def grpc_chat(address: str, **params: Any) -> generation_pb2.GenerateResponse:
    chat = generation_pb2.ChatInput(messages=[tokenizer_pb2.ChatMessage(**m) for m in MESSAGES])
    request = generation_pb2.GenerateRequest(chat=chat, params=generation_pb2.SamplingParams(**params))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response: generation_pb2.GenerateResponse = await stub.Generate(request, timeout=60)
    return response


# --- n --------------------------------------------------------------------------------
async def test_chat_n_choices_seeded_and_prompt_counted_once(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        one = await client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=6, seed=1)
        runs = [
            await client.chat.completions.create(
                model=model_name, messages=MESSAGES, n=3, temperature=1.0, seed=7, max_tokens=6
            )
            for _ in range(2)
        ]
    for result in runs:
        assert [c.index for c in result.choices] == [0, 1, 2]
        assert result.usage is not None and one.usage is not None
        assert result.usage.prompt_tokens == one.usage.prompt_tokens
        assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert [c.message.content for c in runs[0].choices] == [c.message.content for c in runs[1].choices]


async def test_chat_stream_n_with_logprobs_equals_unary(gateway: GatewayServer, model_name: str) -> None:
    params: Any = {
        "model": model_name,
        "messages": MESSAGES,
        "n": 2,
        "temperature": 1.0,
        "seed": 3,
        "max_tokens": 8,
        "logprobs": True,
        "top_logprobs": 2,
    }
    async with openai_client(gateway) as client:
        unary = await client.chat.completions.create(**params)
        stream = await client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        texts: dict[int, str] = defaultdict(str)
        logprobs: dict[int, list[Any]] = defaultdict(list)
        reasons: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
                if choice.logprobs and choice.logprobs.content:
                    logprobs[choice.index] += choice.logprobs.content
                if choice.finish_reason:
                    reasons[choice.index] = choice.finish_reason
    for choice in unary.choices:
        assert texts[choice.index] == choice.message.content
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert [e.logprob for e in logprobs[choice.index]] == [e.logprob for e in choice.logprobs.content]
        assert reasons[choice.index] == choice.finish_reason
    assert usage is not None and unary.usage is not None
    assert usage.prompt_tokens == unary.usage.prompt_tokens
    assert usage.completion_tokens == unary.usage.completion_tokens


# --- logprobs -------------------------------------------------------------------------
async def test_chat_logprobs_are_the_services(
    gateway: GatewayServer, generation_address: str, model_name: str
) -> None:
    expected = await grpc_chat(
        generation_address, temperature=0.0, max_new_tokens=8, logprobs=True, top_logprobs=3
    )
    async with openai_client(gateway) as client:
        result = await client.chat.completions.create(
            model=model_name, messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
        )
    content = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == len(expected.logprobs) == result.usage.completion_tokens  # type: ignore[union-attr]
    for got, want in zip(content, expected.logprobs, strict=True):
        assert got.token == want.token and got.bytes == list(want.token.encode())
        assert got.logprob == pytest.approx(want.logprob, abs=1e-6)
        assert [t.token for t in got.top_logprobs] == [t.token for t in want.top_logprobs]
        assert got.top_logprobs[0].logprob == pytest.approx(got.logprob, abs=1e-6)  # greedy: the top one


async def test_chat_without_logprobs_has_none(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        result = await client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=3)
    assert result.choices[0].logprobs is None


async def test_completions_logprobs_and_n(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        result = await client.completions.create(
            model=model_name,
            prompt=["Hello world", "Once upon a time"],
            n=2,
            temperature=1.0,
            seed=5,
            max_tokens=5,
            logprobs=2,
            extra_body={"ignore_eos": True},
        )
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    for choice in result.choices:
        lp = choice.logprobs
        assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
        assert len(lp.tokens) == len(lp.token_logprobs) == 5
        assert lp.top_logprobs is not None and all(1 <= len(top) <= 2 for top in lp.top_logprobs)
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
        assert all(value <= 0 for value in lp.token_logprobs)
    assert result.usage is not None and result.usage.completion_tokens == 20


# --- response_format ------------------------------------------------------------------
async def test_chat_json_schema_outputs_validate(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        result = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,
            n=8,
            temperature=1.0,
            seed=11,
            max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
        )
    for choice in result.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


class Answer(BaseModel):
    answer: bool
    confidence: Literal["low", "high"]


async def test_openai_parse_with_a_pydantic_model(gateway: GatewayServer, model_name: str) -> None:
    """The client's structured-output helper (strict json_schema from a pydantic model) parses."""
    async with openai_client(gateway) as client:
        result = await client.chat.completions.parse(
            model=model_name,
            messages=MESSAGES,
            temperature=1.0,
            seed=2,
            max_tokens=40,
            response_format=Answer,
        )
    parsed = result.choices[0].message.parsed
    assert isinstance(parsed, Answer)


async def test_chat_json_object_streamed(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,
            temperature=1.0,
            seed=4,
            max_tokens=30,
            response_format={"type": "json_object"},
            stream=True,
        )
        text, reason = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    assert text.startswith("{")
    if reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}, None),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, None),
        ({"type": "regex", "regex": "(ab"}, "response_format.regex"),
        ({"type": "xml"}, "response_format.type"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_response_format_is_400(
    gateway: GatewayServer, model_name: str, response_format: Any, param: str | None, stream: bool
) -> None:
    body = {"model": model_name, "messages": MESSAGES, "response_format": response_format, "stream": stream}
    async with httpx.AsyncClient(base_url=base_url(gateway), timeout=60) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == (param or "response_format.json_schema.schema")


async def test_top_logprobs_without_logprobs_is_400(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=model_name, messages=MESSAGES, top_logprobs=2)
    assert caught.value.body["param"] == "top_logprobs"  # type: ignore[index]
