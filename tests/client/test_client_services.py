"""`textserve.client` against real classifier and generation servers: typed results that match
the raw stubs' answers, merged single-text classify calls, one bad text failing only its caller,
deadlines, and generation whole, streamed, and left early.

The classifier is the zero-shot kind on all-MiniLM-L6-v2 in process; the generation server runs
a tiny random GPT-2 (byte-level tokenizer with a ChatML template) saved by the tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from textserve.client import AsyncTextserveClient, DeadlineExceeded, InvalidInput
from textserve.client.api import generate_request
from textserve.core import metrics
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc, generation_pb2_grpc

from tests.support import loopback_server, model_config, start_host, wait_until

TEXTS = [
    "I loved this film, it was wonderful",
    "a dreadful, boring waste of time",
    "the train leaves at nine",
    "what a fantastic performance by the whole cast",
]


def _served(service: str, method: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "textserve_requests_total", {"service": service, "method": method, "code": "OK"}
    )
    return value or 0.0


@pytest.fixture(scope="module")
async def classifier_address() -> AsyncIterator[str]:
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.config import ClassifierServiceConfig
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig

    config = ClassifierServiceConfig(server=loopback_server(), model=model_config())
    host = await start_host([ClassifierApp(config, build_cache(CacheConfig(backend="none"), "classifier"))])
    yield f"127.0.0.1:{host.port_of('classifier')}"
    await host.stop(grace=1.0)


async def _raw_classify(address: str, texts: list[str]) -> classifier_pb2.ClassifyResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        return await stub.Classify(classifier_pb2.ClassifyRequest(texts=texts), timeout=60)


async def test_classify_results_match_the_raw_stub_and_single_calls_merge(classifier_address: str) -> None:
    raw = await _raw_classify(classifier_address, TEXTS)
    async with AsyncTextserveClient(classifier=classifier_address) as client:
        batch = await client.classify_batch(TEXTS)
        assert [item.top_label for item in batch.items] == [c.top_label for c in raw.classifications]
        for item, expected in zip(batch.items, raw.classifications, strict=True):
            assert list(item.scores) == [s.label for s in expected.scores]  # ranked as the server did
            assert np.allclose(list(item.scores.values()), [s.score for s in expected.scores], atol=1e-6)
        assert batch.model.name == raw.model.name == "all-MiniLM-L6-v2"
        assert batch.model.precision == raw.model.precision == "fp32"
        assert batch.usage.input_tokens == raw.usage.input_tokens

        many = [TEXTS[i % len(TEXTS)] + f" ({i})" for i in range(64)]
        before = _served("classifier", "Classify")
        singles = await asyncio.gather(*(client.classify(text) for text in many))
        served = _served("classifier", "Classify") - before
        assert 1 <= served <= 64 / 4, served  # merged into far fewer RPCs than callers
        alone = await client.classify_batch(many[:5])
        for single, expected in zip(singles[:5], alone.items, strict=True):
            assert single.top_label == expected.top_label
            assert np.allclose(list(single.scores.values()), list(expected.scores.values()), atol=1e-5)

        # Labels the request brings, and top_k.
        topics = await client.classify(
            "the striker scored twice in the final", labels=["sports", "cooking", "finance"], top_k=2
        )
        assert topics.top_label == "sports" and len(topics.scores) == 2


async def test_a_bad_text_among_merged_classify_calls_fails_only_its_caller(
    classifier_address: str,
) -> None:
    texts = [f"a perfectly fine sentence {i}" for i in range(24)]
    texts[5] = "   "
    async with AsyncTextserveClient(classifier=classifier_address) as client:
        results = await asyncio.gather(*(client.classify(text) for text in texts), return_exceptions=True)
        with pytest.raises(DeadlineExceeded):
            await client.classify("no time for this", timeout=0.0001)
    bad = results[5]
    assert isinstance(bad, InvalidInput) and bad.field == "texts[0]", bad
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 5)


@pytest.fixture(scope="module")
async def generation_host(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceHost]:
    from textserve.core.cache import build_cache
    from textserve.core.config import CacheConfig, ModelConfig
    from textserve.generation.app import GenerationApp
    from textserve.generation.config import GenerationServiceConfig
    from textserve.runtime.random_lm import byte_level_tokenizer, save_random_model
    from transformers import GPT2Config

    tokenizer = byte_level_tokenizer()
    eos = int(tokenizer.eos_token_id)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    path = save_random_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", gpt2, tokenizer, seed=5)
    config = GenerationServiceConfig(
        server=loopback_server(), model=ModelConfig(path=str(path), backend="torch", device="cpu")
    )
    host = await start_host([GenerationApp(config, build_cache(CacheConfig(backend="none"), "generation"))])
    yield host
    await host.stop(grace=1.0)


async def test_generate_and_stream_match_the_raw_stub(generation_host: ServiceHost) -> None:
    address = f"127.0.0.1:{generation_host.port_of('generation')}"
    params = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        raw = await stub.Generate(generate_request("Once upon a time", **params), timeout=60)
        raw_chat = await stub.Generate(generate_request([("user", "hello there")], **params), timeout=60)
    async with AsyncTextserveClient(generation=address) as client:
        whole = await client.generate("Once upon a time", **params)
        assert whole.token_ids == list(raw.token_ids) and len(whole.token_ids) == 12
        assert whole.text == raw.text and whole.finish_reason == "length"
        assert whole.usage.output_tokens == 12 and whole.model.name == raw.model.name
        chat = await client.generate([("user", "hello there")], **params)
        assert chat.token_ids == list(raw_chat.token_ids)
        with pytest.raises(DeadlineExceeded):  # before, during or after the server's first token
            await client.generate("no time for this", timeout=0.0001, **params)

        chunks = [chunk async for chunk in client.stream("Once upon a time", **params)]
        assert "".join(c.text for c in chunks) == whole.text
        assert [t for c in chunks for t in c.token_ids] == whole.token_ids
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage is not None
        assert all(not c.finish_reason for c in chunks[:-1])

        # Leaving the loop early cancels the generation on the server: its stream ends.
        in_flight = metrics.REQUESTS_IN_FLIGHT.labels(service="generation", method="GenerateStream")
        long = {**params, "max_new_tokens": 200}
        async for _ in client.stream("a long story", **long):
            assert in_flight._value.get() == 1
            break
        await wait_until(lambda: in_flight._value.get() == 0)

        with pytest.raises(InvalidInput) as caught:
            await client.generate("x", max_new_tokens=10**6)
        assert "max_new_tokens" in caught.value.field
