"""Generation service end to end: real gRPC servers on loopback, tiny random causal LMs built here.

Two models, both built from a config in this module (nothing is downloaded):
- GPT-2 shaped, with a byte-level BPE tokenizer and no chat template;
- Llama shaped, with the WordPiece tokenizer of the packaged MiniLM model and a chat template.
Correctness is checked against transformers' own `generate()` run on each prompt alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from textserve.core.config import CacheConfig, LimitsConfig, ModelConfig
from textserve.core.metrics import REGISTRY
from textserve.generation.config import GenerationServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import generation_pb2, generation_pb2_grpc, tokenizer_pb2

from tests.support import loopback_server, start_host

CONTEXT = 256
MAX_NEW_LIMIT = 200
PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Kubernetes schedules pods onto nodes",
    "a",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "café, naïve, Zürich",
    "def main():\n    return 0",
    "What is the weather like in the city today? I would like to know before I go out.",
    "Continuous batching",
    "tokens tokens tokens",
    "One more prompt, a little longer than the others, so that the batch has to be padded on the left side.",
    "short",
    "emoji 🚀 and more",
    "How are you?",
    "Punctuation (a, b); [c] {d}",
    "the end",
]


@dataclass
class Served:
    """A model directory and the service that serves it."""

    name: str
    path: Path
    host: ServiceHost
    address: str
    tokenizer: Any
    model: Any


def _gpt2(path: Path) -> Path:
    from textserve.runtime.random_lm import byte_level_tokenizer, save_random_model
    from transformers import GPT2Config

    tokenizer = byte_level_tokenizer(chat_template=None)
    eos = int(tokenizer.eos_token_id)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return save_random_model(path, config, tokenizer, seed=7)


def _llama(path: Path) -> Path:
    from textserve.core.config import default_model_path
    from textserve.runtime.random_lm import save_random_model
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=CONTEXT,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.02,
        bos_token_id=int(tokenizer.cls_token_id),
        eos_token_id=int(tokenizer.sep_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    return save_random_model(path, config, tokenizer, seed=11)


async def _serve(path: Path) -> Served:
    from textserve.core.cache import MemoryCacheBackend, ResponseCache
    from textserve.generation.app import GenerationApp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(path=str(path), backend="torch", device="cpu"),
        limits=LimitsConfig(max_text_chars=10_000),
        max_new_tokens_default=16,
        max_new_tokens_limit=MAX_NEW_LIMIT,
        max_running_sequences=32,
        max_batched_tokens=32,  # longer prompts, or many at once, are prefilled in chunks
        prefix_block_tokens=8,
    )
    cache_config = CacheConfig(backend="memory")
    cache = ResponseCache(MemoryCacheBackend(1000), cache_config, "generation")
    host = await start_host([GenerationApp(config, cache)])
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    return Served(
        path.name,
        path,
        host,
        f"127.0.0.1:{host.port_of('generation')}",
        AutoTokenizer.from_pretrained(str(path)),
        model,
    )


@pytest.fixture(scope="module")
async def gpt2(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    served = await _serve(_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2"))
    yield served
    await served.host.stop(grace=1.0)


@pytest.fixture(scope="module")
async def llama(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    served = await _serve(_llama(tmp_path_factory.mktemp("models") / "tiny-llama"))
    yield served
    await served.host.stop(grace=1.0)


@pytest.fixture(params=["gpt2", "llama"])
def served(request: pytest.FixtureRequest) -> Served:
    """Each model in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def reference(served: Served, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' generate() on this prompt alone (greedy)."""
    with torch.inference_mode():
        output = served.model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=served.tokenizer.pad_token_id,
        )
    return [int(i) for i in output[0, len(prompt_ids) :]]


def request(prompt: str, **params: Any) -> generation_pb2.GenerateRequest:
    skip_cache = params.pop("skip_cache", True)
    return generation_pb2.GenerateRequest(
        prompt=prompt, params=generation_pb2.SamplingParams(**params), skip_cache=skip_cache
    )


async def collect(
    stub: generation_pb2_grpc.GenerationServiceStub, req: generation_pb2.GenerateRequest
) -> Any:
    """Runs GenerateStream; returns (deltas, token ids, last message)."""
    deltas: list[str] = []
    ids: list[int] = []
    last = None
    async for item in stub.GenerateStream(req, timeout=60):
        deltas.append(item.text_delta)
        ids.extend(item.token_ids)
        last = item
    return deltas, ids, last


def gauge(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": "generation", "model": model}) or 0.0


async def test_concurrent_greedy_equals_generate_alone(served: Served) -> None:
    """16 prompts at once (half streamed, half unary) == generate() on each prompt alone."""
    max_new = 12
    labels = {"service": "generation", "model": served.name, "version": "1"}
    rows_before = REGISTRY.get_sample_value("textserve_batch_size_sum", labels) or 0.0
    steps_before = REGISTRY.get_sample_value("textserve_batch_size_count", labels) or 0.0
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        calls = []
        for index, prompt in enumerate(PROMPTS):
            req = request(prompt, max_new_tokens=max_new)
            calls.append(collect(stub, req) if index % 2 else stub.Generate(req, timeout=60))
        results = await asyncio.gather(*calls)
    for prompt, result in zip(PROMPTS, results, strict=True):
        prompt_ids = served.tokenizer(prompt)["input_ids"]
        ids = list(result.token_ids) if isinstance(result, generation_pb2.GenerateResponse) else result[1]
        assert ids == reference(served, prompt_ids, max_new), prompt
        usage = result.usage if isinstance(result, generation_pb2.GenerateResponse) else result[2].usage
        assert usage.input_tokens == len(prompt_ids)
        assert usage.output_tokens == len(ids)
    rows = (REGISTRY.get_sample_value("textserve_batch_size_sum", labels) or 0.0) - rows_before
    steps = (REGISTRY.get_sample_value("textserve_batch_size_count", labels) or 0.0) - steps_before
    assert steps > 0 and rows > steps  # this test's rows shared its steps (deltas: other tests ran too)


async def test_shared_prefixes_and_chunked_prompts_equal_generate_alone(served: Served) -> None:
    """Prompts that share a long prefix reuse its keys and values, long prompts are prefilled in
    chunks while others decode: greedy outputs stay those of generate() on each prompt alone."""
    max_new = 10
    system = "System: you are a careful assistant that answers in one short sentence. " * 2
    first = system + "User: hello?"
    shared = [system + f"User: question number {i}?" for i in range(6)]
    long = [f"{i} " + "a long prompt that takes several chunks to prefill, " * 3 for i in range(3)]
    labels = {"service": "generation", "model": served.name}
    hits_before = REGISTRY.get_sample_value("textserve_generation_prefix_cache_hits_total", labels) or 0.0
    saved_before = (
        REGISTRY.get_sample_value("textserve_generation_prefix_cache_tokens_saved_total", labels) or 0.0
    )
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        warm = await collect(stub, request(first, max_new_tokens=max_new))  # its blocks get cached
        results = [
            warm,
            *await asyncio.gather(
                *(collect(stub, request(p, max_new_tokens=max_new)) for p in [*shared, *long])
            ),
        ]
    for prompt, (_, ids, _) in zip([first, *shared, *long], results, strict=True):
        prompt_ids = served.tokenizer(prompt)["input_ids"]
        assert ids == reference(served, prompt_ids, max_new), prompt
    assert min(len(served.tokenizer(p)["input_ids"]) for p in long) > 32  # chunked (max_batched_tokens)
    hits = (
        REGISTRY.get_sample_value("textserve_generation_prefix_cache_hits_total", labels) or 0.0
    ) - hits_before
    saved = (
        REGISTRY.get_sample_value("textserve_generation_prefix_cache_tokens_saved_total", labels) or 0.0
    ) - saved_before
    assert hits >= len(shared)
    assert saved >= len(shared) * 8 * (len(served.tokenizer(system)["input_ids"]) // 8 - 1)


async def test_stream_deltas_rebuild_the_text(served: Served) -> None:
    """Deltas concatenate to the unary text and to the tokenizer's own decode of the ids."""
    prompt = "emoji 🚀 café naïve"
    async with grpc.aio.insecure_channel(served.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        deltas, ids, last = await collect(stub, request(prompt, max_new_tokens=40, ignore_eos=True))
        unary = await stub.Generate(request(prompt, max_new_tokens=40, ignore_eos=True))
    assert len(ids) == 40 and list(unary.token_ids) == ids
    assert "".join(deltas) == unary.text
    if served.name == "tiny-gpt2":  # byte level: the text is exactly the ids' bytes
        assert unary.text == served.tokenizer.decode(ids, skip_special_tokens=True)
    else:  # WordPiece: exactly (spaces included) what the ids add to a decode of the prompt
        prompt_ids = served.tokenizer(prompt)["input_ids"]
        prefix, whole = (
            served.tokenizer.decode(i, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for i in (prompt_ids, prompt_ids + ids)
        )
        assert whole.startswith(prefix)
        assert unary.text == whole[len(prefix) :]
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert last.usage.output_tokens == 40 and last.model.name == served.name
    assert unary.finish_reason == generation_pb2.FINISH_REASON_LENGTH


async def test_stream_never_splits_a_character(gpt2: Served) -> None:
    """Byte-level tokens split multi-byte characters; no delta may carry half of one."""
    tokenizer = gpt2.tokenizer
    text = "日本語 🚀✨ Привет"
    ids = tokenizer(text)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # single tokens do split characters
    from textserve.generation.detokenize import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


async def test_seeded_sampling_is_reproducible(gpt2: Served) -> None:
    params = {"max_new_tokens": 24, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "ignore_eos": True}
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        alone = await stub.Generate(request("Hello world", seed=42, **params))
        crowd = await asyncio.gather(
            stub.Generate(request("Hello world", seed=42, **params)),
            *(stub.Generate(request(p, seed=i, **params)) for i, p in enumerate(PROMPTS[:8])),
            collect(stub, request("Hello world", seed=42, **params)),
        )
        other = await stub.Generate(request("Hello world", seed=43, **params))
    assert list(crowd[0].token_ids) == list(alone.token_ids)
    assert crowd[-1][1] == list(alone.token_ids)
    assert list(other.token_ids) != list(alone.token_ids)


async def test_stop_sequence_ends_the_text(gpt2: Served) -> None:
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        full = await stub.Generate(request("Hello world", max_new_tokens=40, ignore_eos=True))
        text = full.text
        assert len(text) > 12
        stop = text[8:11]
        cut = text.find(stop)
        unary = await stub.Generate(request("Hello world", max_new_tokens=40, ignore_eos=True, stop=[stop]))
        deltas, ids, last = await collect(
            stub, request("Hello world", max_new_tokens=40, ignore_eos=True, stop=["never-produced", stop])
        )
    assert unary.text == text[:cut]
    assert unary.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert "".join(deltas) == text[:cut]
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert ids == list(unary.token_ids) and len(ids) < 40


async def test_chat_is_rendered_with_the_template(llama: Served) -> None:
    messages = [("system", "Be brief."), ("user", "Hello there")]
    rendered = llama.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = llama.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    req = generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatInput(
            messages=[tokenizer_pb2.ChatMessage(role=r, content=c) for r, c in messages]
        ),
        params=generation_pb2.SamplingParams(max_new_tokens=10),
        skip_cache=True,
    )
    async with grpc.aio.insecure_channel(llama.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response = await stub.Generate(req)
        info = await stub.GenerationInfo(generation_pb2.GenerationInfoRequest())
    assert response.usage.input_tokens == len(prompt_ids)
    assert list(response.token_ids) == reference(llama, prompt_ids, 10)
    assert info.has_chat_template


async def test_chat_without_template_is_invalid_argument(gpt2: Served) -> None:
    req = generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatInput(messages=[tokenizer_pb2.ChatMessage(role="user", content="hi")])
    )
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("chat:") and "no chat template" in caught.value.details()


@pytest.mark.parametrize(
    ("req", "field", "limit"),
    [
        (generation_pb2.GenerateRequest(prompt=""), "prompt", "empty"),
        (generation_pb2.GenerateRequest(), "input", "prompt or chat"),
        (generation_pb2.GenerateRequest(chat=generation_pb2.ChatInput()), "chat.messages", "at least one"),
        (
            request("hi", max_new_tokens=MAX_NEW_LIMIT + 1),
            "params.max_new_tokens",
            f"max_new_tokens_limit={MAX_NEW_LIMIT}",
        ),
        (request("word " * 400), "prompt", f"max_context_tokens={CONTEXT}"),
        (
            request("word " * 40, max_new_tokens=MAX_NEW_LIMIT),
            "params.max_new_tokens",
            f"max_context_tokens={CONTEXT}",
        ),
        (request("hi", temperature=-0.5), "params.temperature", ">= 0"),
        (request("hi", temperature=float("nan")), "params.temperature", ">= 0"),
        (request("hi", top_p=1.5), "params.top_p", "(0, 1]"),
        (request("hi", top_p=-0.1), "params.top_p", "(0, 1]"),
        (request("hi", repetition_penalty=-1.0), "params.repetition_penalty", "> 0"),
        (request("hi", stop=["ok", ""]), "params.stop[1]", "empty"),
        (request("hi", stop=["s"] * 17), "params.stop", "max_stop_sequences=16"),
    ],
)
async def test_bad_input_is_invalid_argument(
    gpt2: Served, req: generation_pb2.GenerateRequest, field: str, limit: str
) -> None:
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Generate(req)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await collect(stub, req)
    for caught in (unary, streamed):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field + ":"), caught.value.details()
        assert limit in caught.value.details()


async def _wait_for_gauge(name: str, model: str, value: float) -> float:
    """Polls a gauge until it equals `value` (or 30 s pass); returns its last reading."""
    for _ in range(300):
        reading = gauge(name, model)
        if reading == value:
            return reading
        await asyncio.sleep(0.1)
    return gauge(name, model)


async def test_client_disconnect_frees_the_slot(gpt2: Served) -> None:
    labels = {"service": "generation", "model": gpt2.name, "reason": "cancelled"}
    cancelled_before = REGISTRY.get_sample_value("textserve_generation_finished_total", labels) or 0.0
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.GenerateStream(request("Hello world", max_new_tokens=MAX_NEW_LIMIT, ignore_eos=True))
        for _ in range(3):
            await call.read()
        assert gauge("textserve_generation_running_sequences", gpt2.name) == 1
        assert gauge("textserve_generation_kv_tokens_used", gpt2.name) > 0
        call.cancel()
        assert await _wait_for_gauge("textserve_generation_running_sequences", gpt2.name, 0) == 0
    assert gauge("textserve_generation_kv_tokens_used", gpt2.name) == 0
    assert (
        REGISTRY.get_sample_value("textserve_generation_finished_total", labels) or 0.0
    ) == cancelled_before + 1


async def test_passed_deadline_is_not_computed(gpt2: Served) -> None:
    """A request whose deadline has passed is refused before it is queued (expiry while queued or
    running is covered step by step in tests/unit/test_generation_engine.py)."""
    from textserve.core.errors import DeadlineExceeded
    from textserve.generation.params import GenerateParams

    service = gpt2.host.apps[0].service  # type: ignore[attr-defined]
    tokens_before = REGISTRY.get_sample_value(
        "textserve_generation_tokens_total", {"service": "generation", "model": gpt2.name}
    )
    with pytest.raises(DeadlineExceeded):
        await service.generate(
            GenerateParams(prompt="Hello", max_new_tokens=5), deadline=time.monotonic() - 1
        )
    tokens_after = REGISTRY.get_sample_value(
        "textserve_generation_tokens_total", {"service": "generation", "model": gpt2.name}
    )
    assert tokens_after == tokens_before


async def test_deterministic_requests_are_cached(gpt2: Served) -> None:
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        first = await stub.Generate(request("cache me", max_new_tokens=8, skip_cache=False))
        second = await stub.Generate(request("cache me", max_new_tokens=8, skip_cache=False))
        skipped = await stub.Generate(request("cache me", max_new_tokens=8, skip_cache=True))
        seeded = [
            await stub.Generate(
                request("cache me", max_new_tokens=8, temperature=1.0, seed=5, skip_cache=False)
            )
            for _ in range(2)
        ]
        unseeded = await stub.Generate(
            request("cache me", max_new_tokens=8, temperature=1.0, skip_cache=False)
        )
        again = await stub.Generate(request("cache me", max_new_tokens=8, temperature=1.0, skip_cache=False))
    assert first.usage.cached_texts == 0 and second.usage.cached_texts == 1
    assert second.text == first.text and list(second.token_ids) == list(first.token_ids)
    assert skipped.usage.cached_texts == 0 and list(skipped.token_ids) == list(first.token_ids)
    assert [s.usage.cached_texts for s in seeded] == [0, 1]
    assert unseeded.usage.cached_texts == 0 and again.usage.cached_texts == 0


async def test_info_describes_model_and_limits(gpt2: Served) -> None:
    async with grpc.aio.insecure_channel(gpt2.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        info = await stub.GenerationInfo(generation_pb2.GenerationInfoRequest())
    assert info.model.name == "tiny-gpt2" and info.model.backend == "torch" and info.model.device == "cpu"
    assert info.max_context_tokens == CONTEXT and info.model.max_input_tokens == CONTEXT
    assert info.max_new_tokens_limit == MAX_NEW_LIMIT
    assert info.max_running_sequences == 32 and info.kv_budget_tokens == 65536
    assert not info.has_chat_template
