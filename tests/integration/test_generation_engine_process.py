"""The generation engine in a process of its own (the default, `engine_process`): same tokens as
the engine in a thread, its metrics in the server's registry, refusals that keep their status,
a dead engine process failing its streams clearly, and a stop that leaves no process behind
(the built-in random model, served over loopback gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import grpc
import pytest
from textserve.core import metrics
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig, ModelConfig
from textserve.generation.app import GenerationApp
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.engine_process import ProcessEngine
from textserve.runtime.causal_lm import CausalLM
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH
from textserve.transport.server import ServiceHost
from textserve.v1 import generation_pb2, generation_pb2_grpc

from tests.support import loopback_server, process_alive, start_host, wait_until

MODEL = ModelConfig(path=RANDOM_MODEL_PATH, backend="torch", intra_op_threads=1)


def _app(**overrides: object) -> GenerationApp:
    config = GenerationServiceConfig(server=loopback_server(), model=MODEL, **overrides)  # type: ignore[arg-type]
    return GenerationApp(config, build_cache(CacheConfig(backend="none"), "generation"))


@contextlib.asynccontextmanager
async def _serving(
    **overrides: object,
) -> AsyncIterator[
    tuple[GenerationApp, ProcessEngine, generation_pb2_grpc.GenerationServiceStub, grpc.aio.Channel]
]:
    """A generation server on loopback (its engine in a process), until the block ends."""
    app = _app(**overrides)
    host, channel, stub = await _served(app)
    try:
        yield app, _engine(app), stub, channel
    finally:
        await channel.close()
        await host.stop(grace=1.0)


async def _served(
    app: GenerationApp,
) -> tuple[ServiceHost, grpc.aio.Channel, generation_pb2_grpc.GenerationServiceStub]:
    host = await start_host([app])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('generation')}")
    return host, channel, generation_pb2_grpc.GenerationServiceStub(channel)


def _request(prompt: str, tokens: int, **params: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        params=generation_pb2.SamplingParams(max_new_tokens=tokens, ignore_eos=True, **params),  # type: ignore[arg-type]
        skip_cache=True,
    )


def _engine(app: GenerationApp) -> ProcessEngine:
    engine = app.service.primary.engine
    assert isinstance(engine, ProcessEngine)
    return engine


@pytest.fixture
async def process_app() -> AsyncIterator[tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub]]:
    # Default limits: concurrent calls reach the engine before a step admits them, so a tight
    # waiting queue would refuse some (the full-queue test serves its own tight limits).
    app = _app()
    host, channel, stub = await _served(app)
    try:
        yield app, stub
    finally:
        await channel.close()
        await host.stop(grace=1.0)


async def test_the_engine_runs_in_another_process_holding_the_weights(
    process_app: tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub],
) -> None:
    app, _ = process_app
    engine = _engine(app)
    assert engine.pid is not None and engine.pid != os.getpid()
    assert process_alive(engine.pid)
    model = app.service.primary.model
    assert model is not None and not isinstance(model, CausalLM)  # the server keeps the tokenizer only
    assert model.info.random_demo and model.info.vocab_size > 0


async def test_greedy_tokens_equal_the_engine_in_a_thread_and_generate(
    process_app: tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub],
) -> None:
    import torch

    _, stub = process_app
    prompts = ["The model server answers", "Tokens stream back one at a time while", "x"]
    process = await asyncio.gather(*(stub.Generate(_request(p, 24)) for p in prompts))
    streamed = [item async for item in stub.GenerateStream(_request(prompts[1], 24))]
    thread_app = _app(engine_process=False)
    host, channel, thread_stub = await _served(thread_app)
    try:
        thread = await asyncio.gather(*(thread_stub.Generate(_request(p, 24)) for p in prompts))
    finally:
        await channel.close()
        await host.stop(grace=1.0)
    reference = CausalLM(MODEL)
    for prompt, ours, theirs in zip(prompts, process, thread, strict=True):
        ids = reference.encode(prompt)
        with torch.inference_mode():
            output = reference.model.generate(
                torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        expected = [int(t) for t in output[0, len(ids) :]]
        assert list(ours.choices[0].token_ids) == list(theirs.choices[0].token_ids) == expected
    assert [t for item in streamed for t in item.token_ids] == list(process[1].choices[0].token_ids)
    assert streamed[-1].usage.output_tokens == 24


async def test_structured_output_and_logprobs_cross_the_process(
    process_app: tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub],
) -> None:
    import json

    app, stub = process_app
    request = _request("Answer in JSON:", 48, temperature=1.0, seed=7)
    request.response_format.type = generation_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    request.params.logprobs = True
    request.params.top_logprobs = 2
    labels = {"service": "generation", "model": app.service.info.name, "kind": "json_object"}

    def sample(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    requests, compiles = (
        sample("textserve_generation_constrained_requests_total"),
        sample("textserve_generation_grammar_compile_seconds_count"),
    )
    response = await stub.Generate(request)
    await stub.Generate(request)  # the grammar is cached now: counted, not compiled again
    assert sample("textserve_generation_constrained_requests_total") == requests + 2
    assert sample("textserve_generation_grammar_compile_seconds_count") == compiles + 1
    choice = response.choices[0]
    if choice.finish_reason == generation_pb2.FINISH_REASON_STOP:
        assert isinstance(json.loads(choice.text), dict)
    assert len(choice.logprobs) == len(choice.token_ids) > 0
    assert all(len(item.top_logprobs) == 2 for item in choice.logprobs)


async def test_metrics_recorded_in_the_engine_process_reach_the_server_registry(
    process_app: tuple[GenerationApp, generation_pb2_grpc.GenerationServiceStub],
) -> None:
    app, stub = process_app
    labels = {"service": "generation", "model": app.service.info.name}
    before = metrics.REGISTRY.get_sample_value("textserve_generation_tokens_total", labels) or 0.0
    ttft_before = (
        metrics.REGISTRY.get_sample_value("textserve_generation_time_to_first_token_seconds_count", labels)
        or 0.0
    )
    await stub.Generate(_request("count me", 10))
    after = metrics.REGISTRY.get_sample_value("textserve_generation_tokens_total", labels)
    assert after == before + 10
    ttft = metrics.REGISTRY.get_sample_value("textserve_generation_time_to_first_token_seconds_count", labels)
    assert ttft == ttft_before + 1
    capacity = metrics.REGISTRY.get_sample_value("textserve_generation_kv_tokens_capacity", labels)
    assert capacity == app.service.config.kv_budget_tokens


async def test_a_full_queue_is_resource_exhausted_with_its_reason() -> None:
    async with _serving(max_running_sequences=4, max_waiting_sequences=2) as (_, _, stub, _):
        calls = [stub.Generate(_request(f"{i} busy", 200)) for i in range(12)]  # 4 run, 2 wait
        results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert refused, "12 calls over 4 running + 2 waiting slots: some must be refused"
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("max_waiting_sequences" in (r.details() or "") for r in refused)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert served and all(len(r.choices[0].token_ids) == 200 for r in served)


async def test_a_dead_engine_process_fails_its_streams_and_a_new_one_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from textserve.generation import engine_process
    from textserve.transport import server as transport_server

    monkeypatch.setattr(engine_process, "_RESTART_DELAYS_S", (1.0,))  # a window to see the refusal in
    monkeypatch.setattr(transport_server, "HEALTH_POLL_S", 0.05)
    async with _serving() as (app, engine, stub, channel):
        health = health_pb2_grpc.HealthStub(channel)
        statuses: list[int] = []

        async def status() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return int(reply.status)

        pid = engine.pid
        assert pid is not None
        before = await stub.Generate(_request("same answer twice", 12))
        stream = stub.GenerateStream(_request("a long one", 900))
        first = await stream.read()
        assert first.token_ids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _read_to_end(stream)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "engine process exited" in (failed.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(_request("after", 4))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable while it restarts
        assert "a new one is starting" in (refused.value.details() or "")
        assert not app.service.ready
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:  # the health status follows the engine
            statuses.append(await status())
            if statuses[-1] == health_pb2.HealthCheckResponse.SERVING and app.service.ready:
                break
            await asyncio.sleep(0.02)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
        assert engine.pid not in (None, pid) and engine.restarts == 1
        after = await stub.Generate(_request("same answer twice", 12))
        assert list(after.choices[0].token_ids) == list(before.choices[0].token_ids)


async def test_stop_ends_running_streams_and_the_engine_process() -> None:
    async with _serving() as (app, engine, stub, _channel):
        pid = engine.pid
        assert pid is not None
        stream = stub.GenerateStream(_request("still going", 900))
        await stream.read()
        await app.service.stop()
        await wait_until(lambda: not process_alive(pid), limit_s=30)
        assert engine.pid is None
        rest = await _read_to_end(stream)  # what it had, then told "cancelled", as with a thread
        assert rest[-1].finish_reason == generation_pb2.FINISH_REASON_CANCELLED
        assert sum(len(item.token_ids) for item in rest) < 900


async def _read_to_end(stream: grpc.aio.UnaryStreamCall) -> list[generation_pb2.GenerateStreamResponse]:  # type: ignore[type-arg]
    items = []
    while (item := await stream.read()) is not grpc.aio.EOF:
        items.append(item)
    return items


async def test_stopping_while_a_new_engine_process_starts_leaves_none_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from textserve.generation import engine_process

    monkeypatch.setattr(engine_process, "_RESTART_DELAYS_S", (0.0,))
    async with _serving() as (app, engine, _, _channel):
        dead = engine.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        await wait_until(lambda: engine.pid not in (None, dead), limit_s=30)  # the new one is loading
        starting = engine.pid
        assert starting is not None
        await app.service.stop()
        await wait_until(lambda: not process_alive(starting), limit_s=30)
        assert engine.pid is None
