"""Where the classifier gets vectors: in this process, or from the embedding service over gRPC.

`LocalVectorSource` embeds with a runtime Encoder inside the classifier (the same
tokenization, batcher and runtime as the embedding service), or with the one the embedding
app of the same process owns (`serve all`, built and shared by apps.py). `encode_texts`
is the local request path (limits, tokenizing, truncation policy) that the
sequence-classification scorer shares. `RemoteVectorSource` calls a running embedding
service (`embedding_address`) through the upstream-call helper of textserve/client/: each
call gets what is left of the request's deadline, does not wait for a connection (an
unreachable service is UNAVAILABLE at once) and reconnects on its own once the service is
back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc
import numpy as np

from textserve.client.channels import open_channel
from textserve.client.upstream import unary_call
from textserve.core.config import ClientConfig, LimitsConfig
from textserve.core.errors import NotReady
from textserve.core.validation import check_texts
from textserve.core.vectors import unit_rows
from textserve.runtime.encoder_engine import Encoder, reject_truncated
from textserve.runtime.tokenization import Encoded
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc


@dataclass(frozen=True)
class EncoderDescription:
    """The model behind the vectors."""

    name: str
    revision: str
    backend: str
    device: str
    max_length: int
    dimensions: int
    labels: tuple[str, ...] = ()
    """Output labels of a sequence-classification model (empty for embeddings)."""
    precision: str = ""
    """Numeric precision in force (fp32, fp16, bf16, int8); empty when the source does not say."""


@dataclass(kw_only=True)
class Accounting:
    """Texts answered from a response cache and where the time of a call went; shared by
    Vectors, the scorers' Scores and the service's ClassifyResult."""

    cached: int = 0
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0


def accounting_of(part: Accounting) -> dict[str, Any]:
    """The Accounting fields of `part`, as keywords for another Accounting."""
    return {item.name: getattr(part, item.name) for item in dataclasses.fields(Accounting)}


@dataclass
class Vectors(Accounting):
    """One row per text, with token accounting and where time went."""

    values: np.ndarray
    tokens: list[int]
    truncated: list[bool]


class VectorSource(Protocol):
    """Texts -> vectors (unit length for embeddings) for the classifier."""

    location: str
    """"in-process" or the embedding service's address (for logs and errors)."""

    async def start(self) -> None:
        """Loads the model (in-process) or does nothing (remote: connects on first use)."""
        ...

    async def stop(self) -> None:
        """Stops the batcher or closes the channel."""
        ...

    async def describe(self, deadline: float | None) -> EncoderDescription:
        """The model behind the vectors; NotReady while it loads or is unreachable."""
        ...

    async def embed(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        """Vectors of texts; raises the error kinds of the embedding service."""
        ...


ModelHome = Literal["owned", "shared", "remote"]
"""Where the model behind a source runs: loaded by the classifier, by another app of this
process, or in another service."""


def home_of(source: VectorSource) -> ModelHome:
    """Where the model behind `source` runs."""
    if isinstance(source, LocalVectorSource):
        return "owned" if source.owned else "shared"
    return "remote"


@dataclass
class EncodedTexts:
    """Texts as token ids, with the time tokenizing took."""

    inputs: list[Encoded]
    tokenize_seconds: float


async def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    deadline: float | None,
    truncate: bool | None,
    limits: LimitsConfig,
) -> EncodedTexts:
    """Checks texts against `limits`, tokenizes them, and rejects overlong ones unless
    truncating (None: the limits' default)."""
    if not encoder.ready:
        raise NotReady("model is still loading")
    check_texts(texts, limits)
    started = time.perf_counter()
    inputs = await encoder.tokenize(texts, deadline)
    tokenized = time.perf_counter()
    if not (limits.truncate if truncate is None else truncate):
        reject_truncated(inputs, "texts", encoder.max_length)
    return EncodedTexts(inputs, tokenized - started)


class InProcessEncoder:
    """An Encoder in this process that the classifier runs: its own copy of the model
    (owned: started and stopped with the classifier, no response cache) or the embedding
    app's (`owned=False`, `serve all`: started and stopped by that app, with its response
    cache; describe() is NotReady until it loads)."""

    def __init__(self, encoder: Encoder, limits: LimitsConfig, *, owned: bool = True) -> None:
        self.encoder = encoder
        self.limits = limits
        self.owned = owned
        self.location = "in-process" if owned else "embedding service in this process"

    async def start(self) -> None:
        if self.owned:
            await self.encoder.start()

    async def stop(self) -> None:
        if self.owned:
            await self.encoder.stop()

    async def describe(self, deadline: float | None) -> EncoderDescription:
        return describe_encoder(self.encoder)

    async def run(
        self,
        task: Literal["embed", "predict"],
        texts: Sequence[str],
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Vectors:
        """The Encoder's rows for texts (pooled vectors, unnormalized, or logits), after the
        request checks of `encode_texts`."""
        encoded = await encode_texts(self.encoder, texts, deadline, truncate, self.limits)
        verb = self.encoder.embed if task == "embed" else self.encoder.predict
        output = await verb(encoded.inputs, deadline, skip_cache=skip_cache)
        return Vectors(
            values=np.stack(output.rows),
            tokens=[len(item.ids) for item in encoded.inputs],
            truncated=[item.truncated for item in encoded.inputs],
            cached=sum(output.cached),
            tokenize_seconds=encoded.tokenize_seconds,
            queue_seconds=output.queue_seconds,
            inference_seconds=output.inference_seconds,
        )


class LocalVectorSource(InProcessEncoder):
    """Unit vectors from an Encoder in this process (task "embedding")."""

    async def embed(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        vectors = await self.run("embed", texts, deadline, truncate, skip_cache)
        vectors.values = unit_rows(vectors.values)
        return vectors


def describe_encoder(encoder: Encoder) -> EncoderDescription:
    """The model of an in-process Encoder; NotReady while it loads."""
    info = encoder.info
    return EncoderDescription(
        info.name,
        info.revision,
        info.backend,
        info.device,
        info.max_length,
        info.dimensions,
        info.labels,
        precision=info.precision,
    )


def _truncation(truncate: bool | None) -> common_pb2.TruncationPolicy:
    if truncate is None:
        return common_pb2.TRUNCATION_POLICY_UNSPECIFIED
    return common_pb2.TRUNCATION_POLICY_TRUNCATE if truncate else common_pb2.TRUNCATION_POLICY_REJECT


class RemoteVectorSource:
    """Unit-length vectors from an embedding service over gRPC."""

    def __init__(
        self, address: str, client: ClientConfig | None = None, *, token: str | None = None, service: str
    ) -> None:
        self.location = address
        self._client = client or ClientConfig()
        self._token = token
        self._service = service
        self._channel: grpc.aio.Channel | None = None
        self._stub: embedding_pb2_grpc.EmbeddingServiceStub | None = None
        self._description: EncoderDescription | None = None

    @property
    def upstream(self) -> str:
        """How errors name the embedding service."""
        return f"embedding service at {self.location}"

    def _get_stub(self) -> embedding_pb2_grpc.EmbeddingServiceStub:
        if self._stub is None:
            self._channel = open_channel(self.location, self._client, token=self._token)
            self._stub = embedding_pb2_grpc.EmbeddingServiceStub(self._channel)
        return self._stub

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stub = None

    async def _call(self, method: str, request: Any, deadline: float | None) -> Any:
        """One call to the embedding service (errors keep their kind, named after the service)."""
        return await unary_call(
            getattr(self._get_stub(), method),
            request,
            service=self._service,
            method=f"EmbeddingService/{method}",
            deadline=deadline,
            default_timeout_s=self._client.timeout_s,
            upstream=self.upstream,
        )

    async def describe(self, deadline: float | None) -> EncoderDescription:
        if self._description is not None:
            return self._description
        info = await self._call("Info", embedding_pb2.InfoRequest(), deadline)
        model = info.model
        self._description = EncoderDescription(
            model.name,
            model.revision,
            model.backend,
            model.device,
            model.max_input_tokens,
            info.dimensions,
            precision=model.precision,
        )
        return self._description

    async def embed(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        request = embedding_pb2.EmbedRequest(
            texts=list(texts), normalize=True, truncation=_truncation(truncate), skip_cache=skip_cache
        )
        response = await self._call("Embed", request, deadline)
        if len(response.embeddings) != len(texts):
            raise NotReady(
                f"{self.upstream} answered {len(response.embeddings)} vectors for {len(texts)} texts"
            )
        values = np.array([item.values for item in response.embeddings], dtype=np.float32)
        self._note_model(response.model, values.shape[1])
        timing = response.timing
        return Vectors(
            values=values,
            tokens=[item.input_tokens for item in response.embeddings],
            truncated=[item.truncated for item in response.embeddings],
            cached=response.usage.cached_texts,
            tokenize_seconds=timing.tokenize_time_ns / 1e9,
            queue_seconds=timing.queue_time_ns / 1e9,
            inference_seconds=timing.inference_time_ns / 1e9,
        )

    def _note_model(self, model: common_pb2.ModelInfo, dimensions: int) -> None:
        """Keeps the description current when the embedding service was replaced by another model."""
        known = self._description
        if known is None or (known.name, known.revision, known.dimensions, known.precision) != (
            model.name,
            model.revision,
            dimensions,
            model.precision,
        ):
            self._description = dataclasses.replace(
                known or EncoderDescription("", "", "", "", 0, 0),
                name=model.name,
                revision=model.revision,
                backend=model.backend,
                device=model.device,
                max_length=model.max_input_tokens,
                dimensions=dimensions,
                precision=model.precision,
            )
