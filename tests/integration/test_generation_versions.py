"""Model versions of the generation service end to end (lifecycle/, generation/versions.py).

A Triton-style repository of tiny random GPT-2-shaped causal LMs: version 1 (seed 7), version 2
(seed 8: other tokens for the same prompt) and version 3 (seed 7 again: the same model as 1).
Real gRPC server on loopback. Pinning by field and metadata (each version's tokens equal
transformers' generate() of its own folder), weighted split sticky per routing key, run-time
weights, the version in every response and in the cache key, shadow traffic (primary responses
unchanged, exact-match agreement equal to what the test computes), a corrupt folder FAILED while
version 1 keeps serving, and a swap under streaming load through tritonclient's load_model.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from textserve.core.cache import MemoryCacheBackend, ResponseCache
from textserve.core.config import CacheConfig
from textserve.core.metrics import REGISTRY
from textserve.generation.app import GenerationApp
from textserve.generation.engine_process import ProcessEngine
from textserve.lifecycle.routing import choose
from textserve.transport.server import ServiceHost
from textserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc

from tests.generation_versions_support import LM, lm_config, make_corrupt_lm_version, make_lm_version
from tests.lifecycle_support import list_versions, states
from tests.oip_client import official
from tests.support import process_alive, start_host, wait_until

PROMPTS = [
    "Hello world",
    "The quick brown fox",
    "Kubernetes schedules pods onto nodes",
    "a",
    "Numbers: 1 2 3",
    "café, naïve, Zürich",
]
MAX_NEW = 6


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm-repository")
    make_lm_version(root, "1", seed=7)
    make_lm_version(root, "2", seed=8)
    make_lm_version(root, "3", seed=7)
    return root


@pytest.fixture(scope="module")
def cache() -> ResponseCache:
    return ResponseCache(MemoryCacheBackend(1000), CacheConfig(backend="memory"), "generation")


@pytest.fixture(scope="module")
async def host(repo: Path, cache: ResponseCache) -> AsyncIterator[ServiceHost]:
    started = await start_host([GenerationApp(lm_config(repo, weights={"1": 100}), cache)])
    yield started
    await started.stop(grace=1.0)


@pytest.fixture
async def channel(host: ServiceHost) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('generation')}") as opened:
        yield opened
        # Each test starts from the configured routing.
        await models_pb2_grpc.ModelControlStub(opened).SetRouting(
            models_pb2.SetRoutingRequest(weights={"1": 100}), timeout=10
        )


def request(prompt: str, **fields: Any) -> generation_pb2.GenerateRequest:
    params = fields.pop("params", {})
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        params=generation_pb2.SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True, **params),
        skip_cache=fields.pop("skip_cache", True),
        **fields,
    )


def reference(folder: Path, prompt: str) -> list[int]:
    """transformers' greedy generate() of the model in `folder` on `prompt` alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=MAX_NEW,
            min_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(i) for i in output[0, len(ids) :]]


async def set_routing(channel: grpc.aio.Channel, weights: dict[str, float], **shadow: Any) -> None:
    control = models_pb2_grpc.ModelControlStub(channel)
    await control.SetRouting(models_pb2.SetRoutingRequest(weights=weights, **shadow), timeout=10)


async def test_versions_listed_and_pinned_by_field_and_metadata(
    channel: grpc.aio.Channel, repo: Path
) -> None:
    listing = await list_versions(channel)
    assert listing.service == "generation" and listing.model == LM
    assert {v: s for v, s in states(listing).items() if v in ("1", "2", "3")} == {
        "1": "READY",
        "2": "READY",
        "3": "READY",
    }
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    prompt = PROMPTS[1]
    one = await stub.Generate(request(prompt, model_version="1"), timeout=30)
    two = await stub.Generate(request(prompt, model_version="2"), timeout=30)
    three = await stub.Generate(request(prompt), metadata=(("x-textserve-model-version", "3"),), timeout=30)
    assert (one.model.version, two.model.version, three.model.version) == ("1", "2", "3")
    assert one.model.name == two.model.name == LM
    assert list(one.token_ids) == reference(repo / LM / "1", prompt)
    assert list(two.token_ids) == reference(repo / LM / "2", prompt)
    assert list(three.token_ids) == list(one.token_ids) != list(two.token_ids)
    last = None
    ids: list[int] = []
    async for item in stub.GenerateStream(request(prompt, model_version="2"), timeout=30):
        ids.extend(item.token_ids)
        last = item
    assert last is not None and last.model.version == "2" and ids == list(two.token_ids)
    info = await stub.GenerationInfo(generation_pb2.GenerationInfoRequest(), timeout=10)
    assert info.model.version == "1"


async def test_unknown_or_malformed_pin(channel: grpc.aio.Channel) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.Generate(request("hi", model_version="9"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.Generate(request("hi", model_version="two"), timeout=10)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_version" in (malformed.value.details() or "")


async def test_split_is_sticky_per_key_and_follows_runtime_weights(channel: grpc.aio.Channel) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    weights = {"1": 50.0, "2": 50.0}
    await set_routing(channel, weights)
    keys = [f"user-{i}" for i in range(24)]
    served: dict[str, str] = {}
    for key in keys:
        response = await stub.Generate(request("Hello", routing_key=key), timeout=30)
        served[key] = response.model.version
        again = await stub.Generate(
            request("Hello"), metadata=(("x-textserve-routing-key", key),), timeout=30
        )
        assert again.model.version == served[key]
    assert served == {key: choose(weights, ["1", "2", "3"], key) for key in keys}
    assert set(served.values()) == {"1", "2"}
    await set_routing(channel, {"1": 0, "2": 100})
    moved = [
        (await stub.Generate(request("Hello", routing_key=key), timeout=30)).model.version for key in keys
    ]
    assert set(moved) == {"2"}


async def test_cache_key_holds_the_version(channel: grpc.aio.Channel, cache: ResponseCache) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    prompt = "cached per version"
    first = await stub.Generate(request(prompt, model_version="1", skip_cache=False), timeout=30)
    await cache.flush()
    again = await stub.Generate(request(prompt, model_version="1", skip_cache=False), timeout=30)
    other = await stub.Generate(request(prompt, model_version="3", skip_cache=False), timeout=30)
    assert (first.usage.cached_texts, again.usage.cached_texts) == (0, 1)
    assert list(again.token_ids) == list(first.token_ids)
    assert other.usage.cached_texts == 0 and other.model.version == "3"  # same weights, other version


def stable(response: generation_pb2.GenerateResponse) -> bytes:
    """The response's bytes without its time to first token (the one field a rerun changes)."""
    copy = generation_pb2.GenerateResponse()
    copy.CopyFrom(response)
    copy.time_to_first_token_ns = 0
    return copy.SerializeToString()


def shadow_sample(name: str, version: str, **labels: str) -> float:
    values = {"service": "generation", "model": LM, "version": version, **labels}
    return REGISTRY.get_sample_value(name, values) or 0.0


def outcome(version: str, name: str) -> float:
    return shadow_sample("textserve_shadow_requests_total", version, outcome=name)


@pytest.mark.parametrize("shadow", ["2", "3"])
async def test_shadow_leaves_primary_unchanged_and_records_exact_match(
    channel: grpc.aio.Channel, shadow: str
) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)

    async def streamed(prompt: str) -> tuple[list[int], str, bytes]:
        """The stream's tokens, text and last message (how tokens are split into messages
        depends on timing: deltas that reach the server together go out in one message)."""
        items = [item async for item in stub.GenerateStream(request(prompt), timeout=30)]
        tokens = [t for item in items for t in item.token_ids]
        last = generation_pb2.GenerateStreamResponse()
        last.CopyFrom(items[-1])
        last.ClearField("token_ids")
        last.ClearField("text_delta")
        return tokens, "".join(item.text_delta for item in items), last.SerializeToString()

    without = [stable(await stub.Generate(request(p), timeout=30)) for p in PROMPTS]
    without_stream = await streamed(PROMPTS[0])
    await set_routing(channel, {"1": 100}, shadow_version=shadow, shadow_share=1.0)
    agreement = shadow_sample("textserve_shadow_agreement_sum", shadow)
    compared, skipped = outcome(shadow, "compared"), outcome(shadow, "skipped")

    def settled() -> float:
        return outcome(shadow, "compared") + outcome(shadow, "skipped") + outcome(shadow, "failed")

    # One call at a time, each shadow run done before the next call (a client call arriving
    # while a shadow generates makes it give way: 'skipped').
    with_shadow = []
    for prompt in PROMPTS:
        count = settled()
        with_shadow.append(await stub.Generate(request(prompt), timeout=30))
        await wait_until(lambda count=count: settled() >= count + 1)
    count = settled()
    with_stream = await streamed(PROMPTS[0])
    await wait_until(lambda: settled() >= count + 1)
    assert outcome(shadow, "skipped") == skipped
    sampled = request(PROMPTS[0], params={"temperature": 0.8})  # unseeded: nothing to compare
    await stub.Generate(sampled, timeout=30)
    assert outcome(shadow, "skipped") == skipped + 1
    await set_routing(channel, {"1": 100})
    pinned = [
        await stub.Generate(request(p, model_version=shadow), timeout=30) for p in PROMPTS + PROMPTS[:1]
    ]

    assert [stable(r) for r in with_shadow] == without
    assert with_stream == without_stream
    primary = [list(r.token_ids) for r in with_shadow] + [list(with_shadow[0].token_ids)]
    expected = sum(p == list(s.token_ids) for p, s in zip(primary, pinned, strict=True))
    assert outcome(shadow, "compared") - compared == len(PROMPTS) + 1
    assert shadow_sample("textserve_shadow_agreement_sum", shadow) - agreement == pytest.approx(expected)
    assert expected == (len(PROMPTS) + 1 if shadow == "3" else 0)  # same seed agrees; another does not


async def test_corrupt_version_fails_while_version_1_serves(channel: grpc.aio.Channel, repo: Path) -> None:
    make_corrupt_lm_version(repo, "4", repo / LM / "1")
    control = models_pb2_grpc.ModelControlStub(channel)
    loaded = await control.LoadVersion(models_pb2.LoadVersionRequest(version="4"), timeout=60)
    failed = {v.version: v for v in loaded.versions}["4"]
    assert failed.state == models_pb2.VERSION_STATE_FAILED and failed.reason
    assert states(await list_versions(channel))["1"] == "READY"
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    served = await stub.Generate(request("still serving"), timeout=30)
    assert served.model.version == "1"


async def test_open_inference_protocol_pins_a_version(channel: grpc.aio.Channel, host: ServiceHost) -> None:
    triton = official()
    client = triton.aio.InferenceServerClient(f"127.0.0.1:{host.port_of('generation')}")
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    try:
        metadata = await client.get_model_metadata(LM)
        assert {"1", "2", "3"} <= set(metadata.versions)
        for version in ("1", "2"):
            tensor = triton.grpc.InferInput("text_input", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([PROMPTS[2].encode()], dtype=np.object_))
            parameters = {"max_tokens": MAX_NEW, "ignore_eos": True, "skip_cache": True}
            result = await client.infer(LM, [tensor], model_version=version, parameters=parameters)
            native = await stub.Generate(request(PROMPTS[2], model_version=version), timeout=30)
            assert result.as_numpy("text_output")[0].decode() == native.text
            assert result.get_response().parameters["model_version"].string_param == version
    finally:
        await client.close()


async def test_unload_frees_the_version_and_a_reload_serves_again(
    channel: grpc.aio.Channel, host: ServiceHost
) -> None:
    app = next(a for a in host.apps if a.name == "generation")
    versions = app.service.versions  # type: ignore[attr-defined]
    control = models_pb2_grpc.ModelControlStub(channel)
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    before = await stub.Generate(request("free me", model_version="3"), timeout=30)
    runtime = versions.slots["3"].runtime
    engine = runtime.engine
    assert isinstance(engine, ProcessEngine)  # the weights live in the engine process
    pid = engine.pid
    assert pid is not None and process_alive(pid)
    front = weakref.ref(runtime.model)
    del runtime, engine
    unloaded = await control.UnloadVersion(models_pb2.UnloadVersionRequest(version="3"), timeout=60)
    assert unloaded.version.state == models_pb2.VERSION_STATE_UNAVAILABLE
    assert front() is None  # the tokenizer side is gone (the manager collected after the unload)
    assert not process_alive(pid)  # and the weights with the engine process
    with pytest.raises(grpc.aio.AioRpcError) as pinned:
        await stub.Generate(request("free me", model_version="3"), timeout=10)
    assert pinned.value.code() == grpc.StatusCode.UNAVAILABLE
    await control.LoadVersion(models_pb2.LoadVersionRequest(version="3"), timeout=60)
    after = await stub.Generate(request("free me", model_version="3"), timeout=30)
    assert list(after.token_ids) == list(before.token_ids) and after.model.version == "3"


# --- a swap under streaming load -----------------------------------------------------------

CLIENTS = 6
MIN_CALLS_PER_PHASE = 60


@pytest.fixture
async def swap(tmp_path: Path) -> AsyncIterator[tuple[ServiceHost, Path]]:
    make_lm_version(tmp_path, "1", seed=7)
    host = await start_host([GenerationApp(lm_config(tmp_path, weights={"1": 100}))])
    yield host, tmp_path
    await host.stop(grace=1.0)


async def streaming_client(
    address: str, answers: list[tuple[float, str]], failures: list[str], stop: asyncio.Event, index: int
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = 0
        while not stop.is_set():
            call += 1
            started = time.monotonic()
            try:
                if call % 2:
                    last = None
                    async for item in stub.GenerateStream(request(f"client {index} call {call}"), timeout=60):
                        last = item
                    assert last is not None
                    answers.append((started, last.model.version))
                else:
                    whole = await stub.Generate(request(f"client {index} call {call}"), timeout=60)
                    answers.append((started, whole.model.version))
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")


async def test_swap_under_streaming_load_drops_no_call(swap: tuple[ServiceHost, Path]) -> None:
    host, root = swap
    address = f"127.0.0.1:{host.port_of('generation')}"
    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(streaming_client(address, answers, failures, stop, i)) for i in range(CLIENTS)
    ]

    async def calls_after(count: int) -> None:
        await wait_until(lambda: len(answers) >= count + MIN_CALLS_PER_PHASE or bool(failures), limit_s=120)

    try:
        await calls_after(0)
        make_lm_version(root, "2", seed=8)
        oip = official().aio.InferenceServerClient(address)
        try:
            await oip.load_model(LM)  # unmodified tritonclient
            index = await oip.get_model_repository_index(as_json=True)
        finally:
            await oip.close()
        assert {(m["version"], m["state"]) for m in index["models"]} == {("1", "READY"), ("2", "READY")}
        await calls_after(len(answers))
        async with grpc.aio.insecure_channel(address) as channel:
            await set_routing(channel, {"1": 0, "2": 100})
            switched = time.monotonic()
            await calls_after(len(answers))
            control = models_pb2_grpc.ModelControlStub(channel)
            await control.UnloadVersion(models_pb2.UnloadVersionRequest(version="1"), timeout=60)
            assert states(await list_versions(channel)) == {"1": "UNAVAILABLE", "2": "READY"}
        await calls_after(len(answers))
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert failures == []
    assert {version for _, version in answers} == {"1", "2"}
    late = [version for started, version in answers if started > switched]
    assert late and set(late) == {"2"}
    requests = REGISTRY.get_sample_value(
        "textserve_model_requests_total", {"service": "generation", "model": LM, "version": "2", "code": "OK"}
    )
    assert requests is not None and requests >= len(late)
