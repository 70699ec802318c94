"""OpenAI gateway over the generation service: chat and completions, unary and streamed, with the
official openai client on loopback against the real generation service (the tiny random demo
model, built offline from a config). Greedy outputs through HTTP equal the gRPC Generate result;
a client that goes away mid-generation frees its generation slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
from textserve.core.config import ModelConfig
from textserve.core.metrics import REGISTRY
from textserve.gateway.server import GatewayServer
from textserve.generation.config import GenerationServiceConfig
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH
from textserve.v1 import generation_pb2, generation_pb2_grpc, tokenizer_pb2

from tests.gateway_support import base_url, openai_client, running_gateway
from tests.support import loopback_server, start_host

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello! How are you today?"},
]


@pytest.fixture(scope="module")
async def generation_address() -> AsyncIterator[str]:
    """A generation service with the random demo model (no cache, so every call really generates)."""
    from textserve.generation.app import GenerationApp

    config = GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(path=RANDOM_MODEL_PATH, backend="torch", device="cpu"),
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


async def grpc_generate(
    address: str, request: generation_pb2.GenerateRequest
) -> generation_pb2.GenerateResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response: generation_pb2.GenerateResponse = await stub.Generate(request, timeout=60)
    return response


def greedy(max_tokens: int) -> generation_pb2.SamplingParams:
    return generation_pb2.SamplingParams(max_new_tokens=max_tokens, temperature=0.0)


def chat_request(max_tokens: int) -> generation_pb2.GenerateRequest:
    chat = generation_pb2.ChatInput(messages=[tokenizer_pb2.ChatMessage(**m) for m in MESSAGES])
    return generation_pb2.GenerateRequest(chat=chat, params=greedy(max_tokens))


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_until(condition, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    """Polls `condition()` until true or timeout (a bound on waiting, not a timing assertion)."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


# --- chat -----------------------------------------------------------------------------
async def test_chat_unary_equals_grpc_generate(
    gateway: GatewayServer, generation_address: str, model_name: str
) -> None:
    expected = await grpc_generate(generation_address, chat_request(12))
    async with openai_client(gateway) as client:
        result = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=12,
        )
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.model == model_name
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected.text
    assert result.choices[0].finish_reason == ("length" if expected.finish_reason == 1 else "stop")
    assert result.usage is not None
    assert result.usage.prompt_tokens == expected.usage.input_tokens
    assert result.usage.completion_tokens == expected.usage.output_tokens
    assert result.usage.total_tokens == expected.usage.input_tokens + expected.usage.output_tokens


async def test_chat_stream_equals_unary(gateway: GatewayServer, model_name: str) -> None:
    async with openai_client(gateway) as client:
        unary = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0,
            max_completion_tokens=16,
        )
        stream = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0,
            max_completion_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [unary.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and unary.usage is not None
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == unary.usage.prompt_tokens


async def test_raw_stream_is_openai_sse(gateway: GatewayServer, model_name: str) -> None:
    body = {"model": model_name, "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    async with (
        httpx.AsyncClient(base_url=base_url(gateway), timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    events = [event for event in raw.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "choices", "system_fingerprint"}
        assert set(chunk["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])


# --- completions ----------------------------------------------------------------------
async def test_completions_unary_and_streamed(
    gateway: GatewayServer, generation_address: str, model_name: str
) -> None:
    prompts = ["Hello world", "The quick brown fox"]
    expected = [
        await grpc_generate(generation_address, generation_pb2.GenerateRequest(prompt=p, params=greedy(8)))
        for p in prompts
    ]
    async with openai_client(gateway) as client:
        unary = await client.completions.create(model=model_name, prompt=prompts, max_tokens=8, temperature=0)
        stream = await client.completions.create(
            model=model_name, prompt=prompts, max_tokens=8, temperature=0, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert unary.object == "text_completion"
    assert [c.text for c in sorted(unary.choices, key=lambda c: c.index)] == [e.text for e in expected]
    assert unary.usage is not None
    assert unary.usage.completion_tokens == sum(e.usage.output_tokens for e in expected)
    streamed = {0: "", 1: ""}
    finished = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert [streamed[0], streamed[1]] == [e.text for e in expected]
    assert set(finished) == {0, 1}


# --- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 1000}, "n"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
        ({"messages": []}, "messages"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_chat_requests_are_400(
    gateway: GatewayServer, model_name: str, extra: dict[str, object], param: str | None, stream: bool
) -> None:
    body: dict[str, object] = {"model": model_name, "messages": MESSAGES, "stream": stream, **extra}
    async with httpx.AsyncClient(base_url=base_url(gateway), timeout=60) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == (param or "messages[0].content[0].type")
    assert error["message"].startswith(error["param"] + ":")


async def test_unknown_model_is_404(gateway: GatewayServer) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


# --- cancellation ---------------------------------------------------------------------
def _finished_cancelled(model: str) -> float:
    return sample(
        "textserve_generation_finished_total",
        {"service": "generation", "model": model, "reason": "cancelled"},
    )


def _running(model: str) -> float:
    return sample("textserve_generation_running_sequences", {"service": "generation", "model": model})


async def test_cancelled_stream_frees_the_generation_slot(gateway: GatewayServer, model_name: str) -> None:
    cancelled_before = _finished_cancelled(model_name)
    upstream = {"service": "gateway", "method": "GenerationService/GenerateStream", "code": "CANCELLED"}
    upstream_before = sample("textserve_upstream_requests_total", upstream)
    async with openai_client(gateway) as client:
        stream = await client.chat.completions.create(
            model=model_name,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=900,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 3:
                break
        assert _running(model_name) == 1  # still generating when the client leaves
        await stream.close()
    assert await wait_until(lambda: _finished_cancelled(model_name) == cancelled_before + 1)
    assert await wait_until(lambda: _running(model_name) == 0)
    assert await wait_until(
        lambda: sample("textserve_upstream_requests_total", upstream) == upstream_before + 1
    )


async def test_client_leaving_a_unary_request_frees_the_slot(gateway: GatewayServer, model_name: str) -> None:
    cancelled_before = _finished_cancelled(model_name)
    body = {"model": model_name, "messages": MESSAGES, "max_tokens": 900, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=base_url(gateway)) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", json=body, timeout=60))
        assert await wait_until(lambda: _running(model_name) == 1)
        request.cancel()  # the client gives up: its connection closes mid-request
        with pytest.raises(asyncio.CancelledError):
            await request
    assert await wait_until(lambda: _finished_cancelled(model_name) == cancelled_before + 1)
    assert await wait_until(lambda: _running(model_name) == 0)


async def test_stop_lets_open_streams_finish(generation_address: str, model_name: str) -> None:
    body = {
        "model": model_name,
        "messages": MESSAGES,
        "max_tokens": 24,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with running_gateway(generation_address=generation_address, grace_period_s=60.0) as server:
        async with (
            httpx.AsyncClient(base_url=base_url(server), timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            lines = response.aiter_lines()
            first = await anext(lines)
            stopping = asyncio.create_task(server.stop())  # SIGTERM path: drain, then close
            rest = [line async for line in lines]
        await stopping
    events = [line for line in [first, *rest] if line]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][len("data: ") :])["usage"]
    assert usage["completion_tokens"] == 24
