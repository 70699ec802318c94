"""Fuzzing every RPC of every service with hypothesis: no crash, no non-gRPC error.

All four services run in-process on real gRPC servers (loopback, real models; generation
serves its tiny random demo model with a small max_new_tokens limit). The RPC list is read
from each app's registered service names and the protobuf descriptors, so services and
methods added later (including the Open Inference Protocol API every service serves) are
fuzzed without editing this file.

For each RPC, hypothesis sends arbitrary well-typed messages (`strategies.messages`),
valid requests with one field replaced by an arbitrary value (`strategies.near_valid`, so
the fuzzing reaches past the first check; Open Inference Protocol seeds are built from each
model's live metadata) and arbitrary bytes on the wire (`strategies.wire_bytes`). Every
call must end OK or with a well-formed status from ALLOWED (never UNKNOWN, INTERNAL,
UNAVAILABLE, ...), every response must parse as its declared type, in-band stream errors
(ModelStreamInfer's error_message) must carry an allowed code too, and the server must
still report SERVING afterwards.
Calls are made by a synchronous gRPC client in a worker thread while the servers run on
the session's event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import LimitsConfig, ModelConfig
from textserve.generation.config import GenerationServiceConfig
from textserve.oip import grpc_predict_v2_pb2 as oip
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH
from textserve.tokenizer.config import TokenizerServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import (
    classifier_pb2,
    embedding_pb2,
    generation_pb2,
    tokenizer_pb2,
)

from tests.fuzz import strategies
from tests.support import embedding_config, loopback_server, model_config, start_host

# FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 for a longer, non-repeating hunt; CI runs the fixed, fast default.
MESSAGE_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
WIRE_EXAMPLES = max(1, MESSAGE_EXAMPLES * 3 // 10)
DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") in ("", "0")
CALL_TIMEOUT_S = 60.0

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""Outcomes a client may see for any input; anything else (UNKNOWN, INTERNAL, UNAVAILABLE...) fails."""

# (service name used by ServiceHost, module, app class)
APPS: tuple[tuple[str, str, str], ...] = (
    ("tokenizer", "textserve.tokenizer.app", "TokenizerApp"),
    ("embedding", "textserve.embedding.app", "EmbeddingApp"),
    ("classifier", "textserve.classifier.app", "ClassifierApp"),
    ("generation", "textserve.generation.app", "GenerationApp"),
)


def _app_class(module: str, name: str) -> type[Any] | None:
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except ImportError:
        return None


@dataclass(frozen=True)
class Target:
    """One RPC of one service."""

    app: str
    method: _descriptor.MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __str__(self) -> str:
        return f"{self.app}:{self.method.containing_service.name}.{self.method.name}"


def _targets() -> list[Target]:
    pool = descriptor_pool.Default()
    found: list[Target] = []
    for app, module, cls_name in APPS:
        cls = _app_class(module, cls_name)
        if cls is None:
            continue
        for service_name in cls.service_names:
            service = pool.FindServiceByName(service_name)
            found.extend(Target(app, method) for method in service.methods)
    return found


TARGETS = _targets()


def _app(name: str) -> Any:
    if name == "tokenizer":
        from textserve.tokenizer.app import TokenizerApp

        return TokenizerApp(TokenizerServiceConfig(server=loopback_server(), models=[model_config()]))
    if name == "embedding":
        from textserve.embedding.app import EmbeddingApp

        return EmbeddingApp(embedding_config())
    if name == "classifier":
        from textserve.classifier.app import ClassifierApp

        return ClassifierApp(ClassifierServiceConfig(server=loopback_server(), model=model_config()))
    from textserve.generation.app import GenerationApp

    return GenerationApp(
        GenerationServiceConfig(
            server=loopback_server(),
            model=ModelConfig(path=RANDOM_MODEL_PATH, backend="torch"),
            limits=LimitsConfig(max_text_chars=4000),
            max_new_tokens_default=4,
            max_new_tokens_limit=12,
            max_running_sequences=8,
        )
    )


@pytest.fixture(scope="module")
async def fuzz_host() -> AsyncIterator[ServiceHost]:
    """Every service present, each on its own loopback server."""
    names = sorted({target.app for target in TARGETS}, key=[a for a, _, _ in APPS].index)
    host = await start_host([_app(name) for name in names])
    yield host
    await host.stop(grace=1.0)


def _static_seeds() -> dict[str, list[Any]]:
    """Valid requests of the textserve.v1 RPCs, by request type."""
    embed = embedding_pb2.EmbedRequest(texts=["hello world", "a second text"])
    labels = [
        classifier_pb2.LabelSpec(name="good", description="something good"),
        classifier_pb2.LabelSpec(name="bad", examples=["awful", "terrible"]),
    ]
    chat = [tokenizer_pb2.ChatMessage(role="user", content="hello")]
    seeds: list[Any] = [
        embed,
        embedding_pb2.EmbedStreamRequest(request_id="r1", request=embed),
        tokenizer_pb2.TokenizeRequest(texts=["hello world"], return_tokens=True, return_offsets=True),
        tokenizer_pb2.CountTokensRequest(texts=["hello world"]),
        tokenizer_pb2.DetokenizeRequest(sequences=[tokenizer_pb2.TokenIds(ids=[101, 7592, 2088, 102])]),
        tokenizer_pb2.ApplyChatTemplateRequest(messages=chat, add_generation_prompt=True),
        classifier_pb2.ClassifyRequest(texts=["I love it", "I hate it"]),
        classifier_pb2.ClassifyRequest(texts=["I love it"], labels=labels, top_k=1),
        generation_pb2.GenerateRequest(
            prompt="Hello", params=generation_pb2.SamplingParams(max_new_tokens=4)
        ),
        generation_pb2.GenerateRequest(
            chat=generation_pb2.ChatInput(messages=chat),
            params=generation_pb2.SamplingParams(max_new_tokens=3, temperature=0.8, top_k=5, seed=1),
        ),
    ]
    by_type: dict[str, list[Any]] = {}
    for seed in seeds:
        by_type.setdefault(seed.DESCRIPTOR.full_name, []).append(seed)
    return by_type


STATIC_SEEDS = _static_seeds()


def _oip_seeds(channel: grpc.Channel, model: str) -> list[Any]:
    """Valid ModelInferRequests for `model`, built from its live ModelMetadata."""
    metadata = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata",
        request_serializer=oip.ModelMetadataRequest.SerializeToString,
        response_deserializer=oip.ModelMetadataResponse.FromString,
    )(oip.ModelMetadataRequest(name=model), timeout=30)
    request = oip.ModelInferRequest(model_name=model, id="fuzz")
    for spec in metadata.inputs:
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=[2])
        if spec.datatype == "BYTES":
            tensor.contents.bytes_contents.extend([b"hello world", b"second"])
        elif spec.datatype.startswith("UINT"):
            tensor.contents.uint_contents.extend([101, 102])
        elif spec.datatype.startswith("INT"):
            tensor.contents.int_contents.extend([101, 102])
        elif spec.datatype.startswith("FP"):
            tensor.contents.fp32_contents.extend([0.5, 1.0])
    return [request]


@pytest.fixture
def channel_for(fuzz_host: ServiceHost) -> Iterator[Any]:
    """Synchronous channels (for the worker thread), one per service, closed after the test."""
    opened: dict[str, grpc.Channel] = {}

    def get(app: str) -> grpc.Channel:
        if app not in opened:
            opened[app] = grpc.insecure_channel(
                f"127.0.0.1:{fuzz_host.port_of(app)}",
                options=[("grpc.max_receive_message_length", 256 << 20)],
            )
        return opened[app]

    yield get
    for channel in opened.values():
        channel.close()


def _call(
    channel: grpc.Channel, target: Target, requests: list[Any], raw: bool
) -> tuple[grpc.StatusCode, str]:
    """Sends `requests` (one for unary-request RPCs) and reads every response; returns the status."""
    method = target.method
    response_class = message_factory.GetMessageClass(method.output_type)

    def serialize(item: Any) -> bytes:
        return item if raw else item.SerializeToString()

    kwargs: dict[str, Any] = {
        "request_serializer": serialize,
        "response_deserializer": response_class.FromString,  # every response must parse
    }
    responses: list[Any] = []
    timeout = CALL_TIMEOUT_S
    try:
        if method.client_streaming and method.server_streaming:
            responses.extend(channel.stream_stream(target.path, **kwargs)(iter(requests), timeout=timeout))
        elif method.client_streaming:
            responses.append(channel.stream_unary(target.path, **kwargs)(iter(requests), timeout=timeout))
        elif method.server_streaming:
            responses.extend(channel.unary_stream(target.path, **kwargs)(requests[0], timeout=timeout))
        else:
            responses.append(channel.unary_unary(target.path, **kwargs)(requests[0], timeout=timeout))
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    for response in responses:
        in_band = _in_band_error(response)
        if in_band is not None:
            return in_band
    return grpc.StatusCode.OK, ""


def _in_band_error(response: Any) -> tuple[grpc.StatusCode, str] | None:
    """A stream's in-band error ("CODE: message" in error_message) whose code is not allowed."""
    message = getattr(response, "error_message", "")
    if not message:
        return None
    code = getattr(grpc.StatusCode, message.split(":", 1)[0], grpc.StatusCode.UNKNOWN)
    return None if code in ALLOWED else (code, message)


def _fuzz(channel: grpc.Channel, target: Target) -> None:
    """Runs hypothesis on one RPC: typed (arbitrary and near-valid) messages, then raw bytes."""
    input_type = target.method.input_type
    seeds = STATIC_SEEDS.get(input_type.full_name)
    if input_type.full_name == oip.ModelInferRequest.DESCRIPTOR.full_name:
        seeds = _oip_seeds(channel, target.app)
    request_strategy = strategies.requests(input_type, seeds)
    many = target.method.client_streaming

    def check(requests: list[Any], raw: bool) -> None:
        code, details = _call(channel, target, requests, raw)
        assert code in ALLOWED, f"{target} answered {code.name}: {details}"

    common = {
        "deadline": None,
        "database": None,
        "derandomize": DERANDOMIZE,
        "suppress_health_check": list(HealthCheck),
    }

    @settings(max_examples=MESSAGE_EXAMPLES, **common)  # type: ignore[arg-type]
    @given(st.lists(request_strategy, min_size=0 if many else 1, max_size=3 if many else 1))
    def typed(requests: list[Any]) -> None:
        check(requests, raw=False)

    @settings(max_examples=WIRE_EXAMPLES, **common)  # type: ignore[arg-type]
    @given(st.lists(strategies.wire_bytes(), min_size=0 if many else 1, max_size=3 if many else 1))
    def wire(requests: list[bytes]) -> None:
        check(requests, raw=True)

    typed()
    wire()


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_rpc_survives_arbitrary_requests(target: Target, channel_for: Any) -> None:
    channel = channel_for(target.app)
    await asyncio.to_thread(_fuzz, channel, target)
    assert await asyncio.to_thread(_serving, channel)


def test_every_service_is_fuzzed() -> None:
    """The four services (and the inference protocol they all serve) are in the target list."""
    covered = {(t.app, t.method.containing_service.name) for t in TARGETS}
    for app, service in [
        ("tokenizer", "TokenizerService"),
        ("embedding", "EmbeddingService"),
        ("classifier", "ClassifierService"),
        ("generation", "GenerationService"),
    ]:
        assert (app, service) in covered
