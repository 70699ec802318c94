"""What the public client returns: small frozen dataclasses (and numpy arrays), built from replies.

Each `*_of` function turns one protobuf reply into its dataclass; nothing else in the client
reads reply fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textserve.v1 import (
    classifier_pb2,
    common_pb2,
    embedding_pb2,
    generation_pb2,
    tokenizer_pb2,
)


@dataclass(frozen=True)
class ModelInfo:
    """The model that answered."""

    name: str
    revision: str
    backend: str
    device: str
    max_input_tokens: int
    precision: str = ""
    """Numeric precision in force (fp32, fp16, bf16, int8); empty when the server does not say."""


@dataclass(frozen=True)
class Usage:
    """Tokens and texts of one call."""

    input_tokens: int
    output_tokens: int
    truncated_texts: int
    cached_texts: int


@dataclass(frozen=True)
class Timing:
    """Where the server spent the time of one call, in nanoseconds."""

    tokenize_ns: int
    queue_ns: int
    inference_ns: int
    total_ns: int


@dataclass(frozen=True)
class Embeddings:
    """Vectors of several texts (one row each), in the order sent."""

    vectors: np.ndarray
    """float32, shape (texts, dimensions)."""
    input_tokens: list[int]
    truncated: list[bool]
    model: ModelInfo
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class Classification:
    """Labels of one text, best first."""

    top_label: str
    scores: dict[str, float]
    """label -> probability, in the order the server ranked them."""
    logits: np.ndarray | None = None


@dataclass(frozen=True)
class Classifications:
    """Classifications of several texts, in the order sent."""

    items: list[Classification]
    model: ModelInfo
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class Entity:
    """A named entity (or a token's label): code-point span [start, end) of its text."""

    label: str
    score: float
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TextEntities:
    """Entities of one text, and its tokens' labels when asked for."""

    entities: list[Entity]
    tokens: list[Entity]
    windows: int


@dataclass(frozen=True)
class EntityExtraction:
    """Entities of several texts, in the order sent."""

    items: list[TextEntities]
    model: ModelInfo
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class Encoding:
    """Tokens of one text."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    """Code-point [start, end) of each token in the text."""
    truncated: bool
    untruncated_tokens: int


@dataclass(frozen=True)
class Tokenization:
    """Encodings of several texts, in the order sent."""

    encodings: list[Encoding]
    model: ModelInfo
    usage: Usage


@dataclass(frozen=True)
class Generation:
    """A finished completion."""

    text: str
    token_ids: list[int]
    finish_reason: str
    """length, stop, eos or cancelled."""
    model: ModelInfo
    usage: Usage
    time_to_first_token_s: float


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a streamed completion; the last carries finish_reason, usage and model."""

    text: str
    token_ids: list[int]
    finish_reason: str
    """Empty until the last chunk."""
    usage: Usage | None
    model: ModelInfo | None


def model_of(model: common_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        model.name, model.revision, model.backend, model.device, model.max_input_tokens, model.precision
    )


def usage_of(usage: common_pb2.Usage) -> Usage:
    return Usage(usage.input_tokens, usage.output_tokens, usage.truncated_texts, usage.cached_texts)


def timing_of(timing: common_pb2.Timing) -> Timing:
    return Timing(
        timing.tokenize_time_ns, timing.queue_time_ns, timing.inference_time_ns, timing.total_time_ns
    )


def vector_of(item: embedding_pb2.Embedding) -> np.ndarray:
    """One embedding as a float32 vector."""
    return np.asarray(item.values, dtype=np.float32)


def embeddings_of(reply: embedding_pb2.EmbedResponse) -> Embeddings:
    items = reply.embeddings
    vectors = np.stack([vector_of(item) for item in items]) if items else np.zeros((0, 0), dtype=np.float32)
    return Embeddings(
        vectors,
        [item.input_tokens for item in items],
        [item.truncated for item in items],
        model_of(reply.model),
        usage_of(reply.usage),
        timing_of(reply.timing),
    )


def classification_of(item: classifier_pb2.Classification) -> Classification:
    logits = np.asarray(item.logits, dtype=np.float32) if len(item.logits) else None
    return Classification(item.top_label, {score.label: score.score for score in item.scores}, logits)


def classifications_of(reply: classifier_pb2.ClassifyResponse) -> Classifications:
    return Classifications(
        [classification_of(item) for item in reply.classifications],
        model_of(reply.model),
        usage_of(reply.usage),
        timing_of(reply.timing),
    )


def _entity_of(item: classifier_pb2.Entity) -> Entity:
    return Entity(item.label, float(item.score), int(item.start), int(item.end), item.text)


def entities_of(reply: classifier_pb2.ExtractEntitiesResponse) -> EntityExtraction:
    return EntityExtraction(
        [
            TextEntities(
                [_entity_of(e) for e in item.entities], [_entity_of(t) for t in item.tokens], item.windows
            )
            for item in reply.results
        ],
        model_of(reply.model),
        usage_of(reply.usage),
        timing_of(reply.timing),
    )


def tokenization_of(reply: tokenizer_pb2.TokenizeResponse) -> Tokenization:
    encodings = [
        Encoding(
            list(item.ids),
            list(item.tokens),
            [(offset.start, offset.end) for offset in item.offsets],
            item.truncated,
            item.untruncated_tokens,
        )
        for item in reply.encodings
    ]
    return Tokenization(encodings, model_of(reply.model), usage_of(reply.usage))


def finish_reason_name(reason: int) -> str:
    """`length` of FINISH_REASON_LENGTH; empty for UNSPECIFIED."""
    if reason == generation_pb2.FINISH_REASON_UNSPECIFIED:
        return ""
    return generation_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def generation_of(reply: generation_pb2.GenerateResponse) -> Generation:
    return Generation(
        reply.text,
        list(reply.token_ids),
        finish_reason_name(reply.finish_reason),
        model_of(reply.model),
        usage_of(reply.usage),
        reply.time_to_first_token_ns / 1e9,
    )


def chunk_of(reply: generation_pb2.GenerateStreamResponse) -> GenerationChunk:
    last = reply.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED
    return GenerationChunk(
        reply.text_delta,
        list(reply.token_ids),
        finish_reason_name(reply.finish_reason),
        usage_of(reply.usage) if last else None,
        model_of(reply.model) if last else None,
    )
