"""Locust gRPC users for the four textserve services (run by `make loadtest` via run_locust.py).

Locust's documented gRPC pattern: grpc is patched for gevent, each User opens a channel
wrapped in a client interceptor that reports every unary call to `events.request`
(request_type "grpc", name = method); streaming calls are timed in the task and reported
the same way (GenerateStream also reports its time to first token). Any gRPC error counts
as a failure (RESOURCE_EXHAUSTED included: a run below saturation must have none).

Addresses come from the command line (--tokenizer-address ... --generation-address);
choose the users by naming their classes after the options. --per-user-rps turns each
user into a constant-throughput sender (the soak runs below saturation with it); without
it users pause 50-250 ms between calls.

    locust -f loadtests/locustfile.py --headless -u 12 -r 4 -t 60s \
        --embedding-address 127.0.0.1:50052 EmbeddingUser
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, constant_throughput, events, task
from locust.env import Environment
from textserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)

from loadtests.texts import make_texts

grpc_gevent.init_gevent()  # before any channel exists

CALL_TIMEOUT_S = 30.0
TEXTS = make_texts(600, 10, seed=3) + make_texts(600, 40, seed=3) + make_texts(200, 120, seed=3)
PROMPTS = [text[:80] for text in make_texts(200, 20, seed=5)]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    for service, port in (
        ("tokenizer", 50051),
        ("embedding", 50052),
        ("classifier", 50053),
        ("generation", 50054),
    ):
        parser.add_argument(f"--{service}-address", default=f"127.0.0.1:{port}", help=f"{service} host:port")
    parser.add_argument(
        "--per-user-rps", type=float, default=0.0, help="constant throughput per user (0: 50-250 ms pauses)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per generation request")


def report(
    environment: Environment, name: str, started: float, length: int, error: BaseException | None
) -> None:
    """One request event (response time in ms, measured from `started` = perf_counter())."""
    environment.events.request.fire(
        request_type="grpc",
        name=name,
        response_time=(time.perf_counter() - started) * 1000.0,
        response_length=length,
        exception=error,
        context={},
    )


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every unary call to Locust with its method name, time, size and error."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        error: BaseException | None = None
        length = 0
        try:
            length = call.result().ByteSize()
        except grpc.RpcError as exc:
            error = exc
        report(self.environment, client_call_details.method.rsplit("/", 1)[-1], started, length, error)
        return call


class GrpcUser(User):
    """A user with one intercepted channel to its service."""

    abstract = True
    service = ""
    stub_class: Any = None

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        address = getattr(options, f"{self.service}_address", "") if options else ""
        self.channel = grpc.intercept_channel(grpc.insecure_channel(address), LocustInterceptor(environment))
        self.stub = self.stub_class(self.channel)
        rate = float(getattr(options, "per_user_rps", 0.0) or 0.0) if options else 0.0
        self._wait = constant_throughput(rate) if rate > 0 else between(0.05, 0.25)
        self.max_new_tokens = int(getattr(options, "max_new_tokens", 16)) if options else 16
        self.rng = random.Random()

    def wait_time(self) -> float:  # type: ignore[override]
        return float(self._wait(self))

    def on_stop(self) -> None:
        self.channel.close()

    def texts(self, count: int) -> list[str]:
        return [self.rng.choice(TEXTS) for _ in range(count)]


class TokenizerUser(GrpcUser):
    weight = 2
    service = "tokenizer"
    stub_class = tokenizer_pb2_grpc.TokenizerServiceStub

    @task(3)
    def count_tokens(self) -> None:
        self.stub.CountTokens(tokenizer_pb2.CountTokensRequest(texts=self.texts(4)), timeout=CALL_TIMEOUT_S)

    @task(1)
    def tokenize(self) -> None:
        request = tokenizer_pb2.TokenizeRequest(texts=self.texts(2), return_tokens=True, return_offsets=True)
        self.stub.Tokenize(request, timeout=CALL_TIMEOUT_S)


class EmbeddingUser(GrpcUser):
    weight = 3
    service = "embedding"
    stub_class = embedding_pb2_grpc.EmbeddingServiceStub

    @task(4)
    def embed_one(self) -> None:
        self.stub.Embed(embedding_pb2.EmbedRequest(texts=self.texts(1)), timeout=CALL_TIMEOUT_S)

    @task(1)
    def embed_batch(self) -> None:
        self.stub.Embed(
            embedding_pb2.EmbedRequest(texts=self.texts(8), normalize=True), timeout=CALL_TIMEOUT_S
        )

    @task(1)
    def embed_stream(self) -> None:
        def requests() -> Iterator[embedding_pb2.EmbedStreamRequest]:
            for index in range(4):
                request = embedding_pb2.EmbedRequest(texts=self.texts(2))
                yield embedding_pb2.EmbedStreamRequest(request_id=str(index), request=request)

        started = time.perf_counter()
        length, error = 0, None
        try:
            for item in self.stub.EmbedStream(requests(), timeout=CALL_TIMEOUT_S):
                length += item.ByteSize()
        except grpc.RpcError as exc:
            error = exc
        report(self.environment, "EmbedStream", started, length, error)


class ClassifierUser(GrpcUser):
    weight = 2
    service = "classifier"
    stub_class = classifier_pb2_grpc.ClassifierServiceStub
    LABELS = (
        classifier_pb2.LabelSpec(name="tech", description="software, computers, clusters and networks"),
        classifier_pb2.LabelSpec(name="life", description="cooking, gardening, travel and health"),
        classifier_pb2.LabelSpec(name="money", description="finance, prices and markets"),
    )

    @task(3)
    def classify(self) -> None:
        self.stub.Classify(classifier_pb2.ClassifyRequest(texts=self.texts(1)), timeout=CALL_TIMEOUT_S)

    @task(1)
    def classify_own_labels(self) -> None:
        request = classifier_pb2.ClassifyRequest(texts=self.texts(4), labels=self.LABELS, top_k=2)
        self.stub.Classify(request, timeout=CALL_TIMEOUT_S)


class GenerationUser(GrpcUser):
    weight = 1
    service = "generation"
    stub_class = generation_pb2_grpc.GenerationServiceStub

    def _request(self) -> generation_pb2.GenerateRequest:
        params = generation_pb2.SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.rng.choice([0.0, 0.8]),
            top_k=20,
            ignore_eos=True,
        )
        return generation_pb2.GenerateRequest(prompt=self.rng.choice(PROMPTS), params=params)

    @task(2)
    def generate(self) -> None:
        self.stub.Generate(self._request(), timeout=CALL_TIMEOUT_S)

    @task(1)
    def generate_stream(self) -> None:
        started = time.perf_counter()
        length, error, first = 0, None, True
        try:
            for item in self.stub.GenerateStream(self._request(), timeout=CALL_TIMEOUT_S):
                if first:
                    report(self.environment, "GenerateStream first token", started, 0, None)
                    first = False
                length += item.ByteSize()
        except grpc.RpcError as exc:
            error = exc
        report(self.environment, "GenerateStream", started, length, error)
