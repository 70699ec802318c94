"""OpenAI gateway over the embedding service: the official openai client on loopback, real gRPC, real model.

Also the error contract (OpenAI error JSON, status mapped from the gRPC status), health and
readiness, auth pass-through and the HTTP metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from pydantic import SecretStr
from textserve.core.config import AuthConfig, BatcherConfig
from textserve.core.metrics import REGISTRY
from textserve.gateway.server import GatewayServer
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.gateway_support import base_url, openai_client, running_gateway
from tests.support import embedding_config, free_port, loopback_server, start_host

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "emoji 🚀 and accents: café"]


@pytest.fixture(scope="module")
async def gateway(embedding_address: str) -> AsyncIterator[GatewayServer]:
    """The gateway in front of the session's embedding service (no generation service)."""
    async with running_gateway(embedding_address=embedding_address) as server:
        yield server


@pytest.fixture(scope="module")
async def guarded_embedding() -> AsyncIterator[str]:
    """A second embedding service: bearer-token auth on, and a queue of only 2 texts (overload)."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config(
        server=loopback_server(auth=AuthConfig(enabled=True, tokens=[SecretStr("s3cret")])),
        batcher=BatcherConfig(max_queue_size=2),
        cache_enabled=False,
    )
    host: ServiceHost = await start_host([EmbeddingApp(config)])
    yield f"127.0.0.1:{host.port_of('embedding')}"
    await host.stop(grace=1.0)


async def grpc_embed(address: str, texts: list[str], normalize: bool) -> embedding_pb2.EmbedResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response: embedding_pb2.EmbedResponse = await stub.Embed(
            embedding_pb2.EmbedRequest(texts=texts, normalize=normalize), timeout=30
        )
    return response


def vectors(response: embedding_pb2.EmbedResponse) -> np.ndarray:
    return np.asarray([list(item.values) for item in response.embeddings], dtype=np.float32)


# --- results --------------------------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
async def test_openai_client_gets_the_grpc_vectors(
    gateway: GatewayServer, embedding_address: str, encoding_format: str | None
) -> None:
    expected = await grpc_embed(embedding_address, TEXTS, normalize=True)
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    async with openai_client(gateway) as client:
        result = await client.embeddings.create(input=TEXTS, model=MODEL, **extra)  # type: ignore[arg-type]
    if encoding_format == "base64":  # asked for explicitly, the client hands the string back as is
        got = np.stack([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in result.data])  # type: ignore[arg-type]
    else:
        got = np.asarray([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_array_equal(got, vectors(expected))
    assert [item.index for item in result.data] == [0, 1, 2]
    assert result.model == MODEL
    assert result.usage.prompt_tokens == expected.usage.input_tokens == result.usage.total_tokens
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-5 for v in got)


async def test_single_string_and_raw_vectors(gateway: GatewayServer, embedding_address: str) -> None:
    expected = await grpc_embed(embedding_address, [TEXTS[1]], normalize=False)
    async with openai_client(gateway) as client:
        result = await client.embeddings.create(
            input=TEXTS[1], model=MODEL, encoding_format="float", extra_body={"normalize": False}
        )
    assert len(result.data) == 1
    np.testing.assert_array_equal(
        np.asarray(result.data[0].embedding, dtype=np.float32), vectors(expected)[0]
    )


async def test_token_id_inputs_match_text_inputs(gateway: GatewayServer, embedding_address: str) -> None:
    from textserve.core.config import default_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    expected = vectors(await grpc_embed(embedding_address, TEXTS, normalize=True))
    async with openai_client(gateway) as client:
        many = await client.embeddings.create(input=ids, model=MODEL, encoding_format="float")
        one = await client.embeddings.create(input=ids[0], model=MODEL, encoding_format="float")
    got = np.asarray([item.embedding for item in many.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(one.data[0].embedding, dtype=np.float32), expected[0], atol=1e-5)
    assert many.usage.prompt_tokens == sum(len(i) for i in ids)


async def test_models_lists_the_served_model(gateway: GatewayServer) -> None:
    async with openai_client(gateway) as client:
        listed = await client.models.list()
        card = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4o")
    assert [m.id for m in listed.data] == [MODEL]
    assert card.id == MODEL and card.object == "model"


# --- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("input_", "param", "fragment"),
    [
        ("", "input", "must not be empty"),
        (["ok", "  "], "input[1]", "must not be empty"),
        (["a"] * 300, "input", "max_texts_per_request=256"),
        ([[101, 999_999, 102]], "input[0][1]", "outside the vocabulary"),
        ([], "input", "at least one"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    gateway: GatewayServer, input_: object, param: str, fragment: str
) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(input=input_, model=MODEL)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert body["code"] == "invalid_argument"
    assert fragment in body["message"] and body["message"].startswith(param + ":")


async def test_gateway_side_validation_is_400_in_openai_shape(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=base_url(gateway)) as http:
        missing = await http.post("/v1/embeddings", json={"input": "x"})
        broken = await http.post(
            "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
        )
        wrong_format = await http.post(
            "/v1/embeddings", json={"input": "x", "model": MODEL, "encoding_format": "int8"}
        )
        no_route = await http.get("/v1/nothing-here")
    for response in (missing, broken, wrong_format):
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.json()["error"]["param"] == "model"
    assert wrong_format.json()["error"]["param"] == "encoding_format"
    assert no_route.status_code == 404 and "error" in no_route.json()


async def test_unknown_model_is_404(gateway: GatewayServer) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(input="x", model="text-embedding-3-small")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert MODEL in caught.value.body["message"]  # type: ignore[index]


async def test_deadline_is_passed_through_and_504(gateway: GatewayServer) -> None:
    async with openai_client(gateway) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.embeddings.create(
                input=[f"never computed {i}" for i in range(64)],
                model=MODEL,
                extra_headers={"x-request-timeout": "0.001"},
            )
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(
                input="x", model=MODEL, extra_headers={"x-request-timeout": "soon"}
            )
    assert caught.value.status_code == 504
    assert caught.value.body["type"] == "timeout_error"  # type: ignore[index]
    assert caught.value.body["code"] == "deadline_exceeded"  # type: ignore[index]


async def test_backend_down_is_503_and_not_ready() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with running_gateway(embedding_address=dead, max_body_bytes=2048) as server:
        async with openai_client(server) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.embeddings.create(input="x", model=MODEL)
            with pytest.raises(openai.NotFoundError) as no_generation:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        async with httpx.AsyncClient(base_url=base_url(server)) as http:
            ready = await http.get("/ready")
            health = await http.get("/health")
            too_big = await http.post("/v1/embeddings", json={"model": MODEL, "input": "x" * 4096})
    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "service_unavailable_error"  # type: ignore[index]
    assert caught.value.response.headers["retry-after"] == "1"
    assert no_generation.value.body["code"] == "endpoint_not_configured"  # type: ignore[index]
    assert ready.status_code == 503 and ready.json()["backends"] == {"embedding": "UNAVAILABLE"}
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"


async def test_ready_when_backend_serves(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=base_url(gateway)) as http:
        ready = await http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "backends": {"embedding": "SERVING"}}


async def test_auth_is_passed_through_and_overload_is_429(guarded_embedding: str) -> None:
    async with running_gateway(embedding_address=guarded_embedding) as server:
        async with openai_client(server, api_key="s3cret") as client:
            ok = await client.embeddings.create(input=["one", "two"], model=MODEL)
            with pytest.raises(openai.RateLimitError) as overloaded:
                await client.embeddings.create(input=["one", "two", "three"], model=MODEL)
        async with openai_client(server, api_key="wrong") as client:
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await client.embeddings.create(input="x", model=MODEL)
    assert len(ok.data) == 2
    assert overloaded.value.status_code == 429
    assert overloaded.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert "max_queue_size=2" in overloaded.value.body["message"]  # type: ignore[index]
    assert overloaded.value.response.headers["retry-after"] == "1"
    assert denied.value.status_code == 403


async def test_gateway_client_token_is_used_without_forwarding(
    guarded_embedding: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    async with (
        running_gateway(
            embedding_address=guarded_embedding, forward_authorization=False, client_token_file=token_file
        ) as server,
        openai_client(server, api_key="anything") as client,
    ):
        result = await client.embeddings.create(input="x", model=MODEL)
    assert len(result.data) == 1


async def test_http_and_upstream_metrics(gateway: GatewayServer) -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    http_labels = {"service": "gateway", "method": "/v1/embeddings", "code": "200"}
    upstream_labels = {"service": "gateway", "method": "EmbeddingService/Embed", "code": "OK"}
    before = sample("textserve_requests_total", http_labels)
    upstream_before = sample("textserve_upstream_requests_total", upstream_labels)
    durations_before = sample("textserve_request_duration_seconds_count", http_labels)
    async with openai_client(gateway) as client:
        await client.embeddings.create(input="metrics", model=MODEL)
    # The middleware records once the app returns, just after the last byte went out.
    for _ in range(500):
        if sample("textserve_requests_total", http_labels) > before:
            break
        await asyncio.sleep(0.01)
    assert sample("textserve_requests_total", http_labels) == before + 1
    assert sample("textserve_upstream_requests_total", upstream_labels) == upstream_before + 1
    assert sample("textserve_request_duration_seconds_count", http_labels) == durations_before + 1
    assert sample("textserve_requests_in_flight", {"service": "gateway", "method": "/v1/embeddings"}) == 0
    other = {"service": "gateway", "method": "other", "code": "404"}
    other_before = sample("textserve_requests_total", other)
    async with httpx.AsyncClient(base_url=base_url(gateway)) as http:
        await http.get("/no/such/route/12345")
    for _ in range(500):
        if sample("textserve_requests_total", other) > other_before:
            break
        await asyncio.sleep(0.01)
    assert sample("textserve_requests_total", other) == other_before + 1


async def test_raw_response_is_openai_json(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=base_url(gateway)) as http:
        response = await http.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
    body = json.loads(response.content)
    assert response.headers["content-type"] == "application/json"
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert set(body["data"][0]) == {"object", "index", "embedding"}
    assert body["usage"] == {
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "total_tokens": body["usage"]["total_tokens"],
    }
