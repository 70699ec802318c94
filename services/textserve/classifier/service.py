"""Classifier logic: validate, choose the labels, cache lookup, logits, softmax, rank.

Three kinds, chosen by `classifier.kind`:
- sequence_classification: a Hugging Face sequence-classification model run by the same
  runtime and batcher as the embedding model (an in-process EmbeddingService with task
  "sequence-classification"); its logits are the model's.
- zero_shot: cosine similarity of unit embeddings to label prototypes (zero_shot.py);
  requests may name a configured label set or bring their own labels.
- linear_head: a head trained by `textserve train-classifier` (linear_head.py).
zero_shot and linear_head get vectors from the embedding service when `embedding_address`
is set, else in-process (vector_source.py).

The response cache stores each text's logits (before the softmax) under a key made of
the model name and revision, the kind, the label set's content, the truncation choice and
the text. Temperature is applied after the cache, so requests at different temperatures
share entries. Knows nothing of protobuf (convert.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.linear_head import LinearHead
from textserve.classifier.merging import MergingVectorSource
from textserve.classifier.vector_source import (
    EncoderDescription,
    LocalVectorSource,
    RemoteVectorSource,
    Vectors,
    VectorSource,
)
from textserve.classifier.zero_shot import (
    Label,
    PrototypeBank,
    check_request_labels,
    cosine_logits,
    labels_fingerprint,
)
from textserve.core.cache import ResponseCache
from textserve.core.errors import BackendFailure, InvalidInput, NotReady, TextserveError
from textserve.core.validation import check_texts
from textserve.embedding.config import EmbeddingServiceConfig

log = logging.getLogger(__name__)

SERVICE = "classifier"

Kind = Literal["zero_shot", "sequence_classification", "linear_head"]


@dataclass(frozen=True)
class ClassifyParams:
    """One Classify call, as the logic sees it."""

    texts: Sequence[str]
    labels: Sequence[Label] = ()
    label_set: str = ""
    temperature: float = 0.0
    top_k: int = 0
    truncate: bool | None = None
    skip_cache: bool = False


@dataclass(frozen=True)
class TextClassification:
    """One text's scores (best first, top_k cut), best label and logits in label order."""

    scores: list[tuple[str, float]]
    top_label: str
    logits: list[float]


@dataclass
class ClassifyResult:
    """Classifications with token accounting and where time went."""

    classifications: list[TextClassification]
    model: EncoderDescription
    tokens: list[int]
    truncated: list[bool]
    cached: int = 0
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class ClassifierDescription:
    """What ClassifierInfo reports."""

    kind: Kind
    model: EncoderDescription
    labels: tuple[str, ...]
    label_sets: tuple[str, ...]
    max_labels_per_request: int
    default_temperature: float


@dataclass(frozen=True)
class _LabelChoice:
    """The labels a request is scored against."""

    names: tuple[str, ...]
    fingerprint: str
    zero_shot: tuple[Label, ...] = field(default_factory=tuple)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64 inside for stability)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def rank(names: Sequence[str], scores: np.ndarray, top_k: int) -> list[tuple[str, float]]:
    """(label, score) best first (ties keep label order), cut to top_k when it is > 0."""
    order = sorted(range(len(names)), key=lambda i: (-float(scores[i]), i))
    if top_k > 0:
        order = order[:top_k]
    return [(names[i], float(scores[i])) for i in order]


_HEADER = struct.Struct("<IB")


def encode_entry(logits: np.ndarray, tokens: int, truncated: bool) -> bytes:
    """Cache value: token count, truncated flag, float32 logits (little-endian)."""
    return _HEADER.pack(tokens, int(truncated)) + np.asarray(logits, dtype="<f4").tobytes()


def decode_entry(value: bytes | None, n_labels: int) -> tuple[np.ndarray, int, bool] | None:
    """A cache value, or None when absent or of the wrong shape."""
    if value is None or len(value) != _HEADER.size + 4 * n_labels:
        return None
    tokens, truncated = _HEADER.unpack_from(value)
    logits = np.frombuffer(value, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    if not np.all(np.isfinite(logits)):
        return None
    return logits, int(tokens), bool(truncated)


def embedding_config_of(config: ClassifierServiceConfig) -> EmbeddingServiceConfig:
    """The in-process encoder's config: the classifier's model, batcher, limits and batch-budget
    tuning, no cache."""
    return EmbeddingServiceConfig(
        server=config.server,
        client=config.client,
        model=config.model,
        batcher=config.batcher,
        limits=config.limits,
        cache_enabled=False,
        tuned_budget_file=config.tuned_budget_file,
        autotune=config.autotune,
        tuning=config.tuning,
    )


def build_source(config: ClassifierServiceConfig, token: str | None = None) -> VectorSource:
    """The configured vector source: remote when embedding_address is set (not for
    sequence_classification, whose model is always in-process), else in-process."""
    if config.kind == "sequence_classification":
        return LocalVectorSource.create(
            embedding_config_of(config), service=SERVICE, task="sequence-classification"
        )
    if config.embedding_address:
        remote = RemoteVectorSource(config.embedding_address, config.client, token=token, service=SERVICE)
        if config.embedding_calls_in_flight == 0:
            return remote
        return MergingVectorSource(remote, config.embedding_calls_in_flight, config.embedding_call_max_texts)
    return LocalVectorSource.create(embedding_config_of(config), service=SERVICE)


class HeadMismatch(BackendFailure):
    """The linear head was trained on vectors of another size than the model gives."""


class ClassifierService:
    """Owns the vector source, the labels (prototypes or head) and the cache use."""

    def __init__(
        self,
        config: ClassifierServiceConfig,
        cache: ResponseCache | None = None,
        source: VectorSource | None = None,
        token: str | None = None,
    ) -> None:
        self.config = config
        self.kind: Kind = config.kind
        self.cache = cache if config.cache_enabled else None
        self.source = source or build_source(config, token)
        self.prototypes = PrototypeBank(self.source, config.prototype_cache_entries)
        self.label_sets: dict[str, tuple[Label, ...]] = {
            name: tuple(Label.from_config(label) for label in labels)
            for name, labels in config.label_sets.items()
        }
        self.head: LinearHead | None = None
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the head and the in-process model, or waits (bounded) for the embedding service;
        then checks the head against the model and embeds the default label set."""
        if self.kind == "linear_head":
            assert self.config.head_path is not None  # enforced by the config
            self.head = await asyncio.to_thread(LinearHead.load, self.config.head_path)
        await self.source.start()
        if isinstance(self.source, LocalVectorSource) and self.source.owned:
            await self._warm_up(None)
        else:
            await self._wait_for_embedding()
        self._started = True
        log.info(
            "classifier ready",
            extra={"service": SERVICE, "kind": self.kind, "vectors": self.source.location},
        )

    async def _warm_up(self, deadline: float | None) -> None:
        """Describes the model, checks the head against it, embeds the default label set."""
        description = await self.source.describe(deadline)
        self._check_head(description)
        if self.kind == "zero_shot":
            labels = self.label_sets[self.config.default_label_set]
            await self.prototypes.prototypes(labels, description.revision, deadline)

    async def _wait_for_embedding(self) -> None:
        """Retries the warm-up while the embedding service is unreachable or loading, for at
        most embedding_wait_s; then serves anyway (requests get UNAVAILABLE until it is back).
        An embedding service shared in this process is waited for until its model is loaded."""
        shared = isinstance(self.source, LocalVectorSource)
        give_up = math.inf if shared else time.monotonic() + self.config.embedding_wait_s
        while True:
            try:
                await self._warm_up(
                    None if shared else min(give_up, time.monotonic() + self.config.client.timeout_s)
                )
                return
            except HeadMismatch:
                raise
            except TextserveError as error:
                if time.monotonic() >= give_up:
                    log.warning(
                        "embedding service not reachable at start; serving anyway",
                        extra={"service": SERVICE, "address": self.source.location, "error": error.message},
                    )
                    return
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        """Stops the in-process model or closes the channel, then the cache."""
        await self.source.stop()
        if self.cache is not None:
            await self.cache.close()

    def _check_head(self, description: EncoderDescription) -> None:
        head = self.head
        if head is None:
            return
        if head.dimensions != description.dimensions:
            raise HeadMismatch(
                f"linear head {self.config.head_path} takes {head.dimensions}-dimensional vectors "
                f"(trained on {head.model_name!r}) but {description.name!r} from {self.source.location} "
                f"gives {description.dimensions}"
            )
        if head.model_name and head.model_name != description.name:
            log.warning(
                "linear head trained on another model",
                extra={"head_model": head.model_name, "serving_model": description.name},
            )

    # --- description ---------------------------------------------------------------------
    async def describe(self, deadline: float | None = None) -> ClassifierDescription:
        """Kind, model, default labels and label sets."""
        if not self._started:
            raise NotReady("classifier is still loading")
        model = await self.source.describe(deadline)
        return ClassifierDescription(
            kind=self.kind,
            model=model,
            labels=self._default_names(model),
            label_sets=tuple(self.label_sets) if self.kind == "zero_shot" else (),
            max_labels_per_request=self.config.max_labels_per_request if self.kind == "zero_shot" else 0,
            default_temperature=self.config.temperature if self.kind == "zero_shot" else 0.0,
        )

    def _default_names(self, model: EncoderDescription) -> tuple[str, ...]:
        if self.kind == "zero_shot":
            return tuple(label.name for label in self.label_sets[self.config.default_label_set])
        if self.kind == "linear_head":
            assert self.head is not None
            return self.head.labels
        return model.labels

    # --- the request path ----------------------------------------------------------------
    def _choose_labels(self, params: ClassifyParams, model: EncoderDescription) -> _LabelChoice:
        if self.kind != "zero_shot":
            fixed = f"this classifier (kind={self.kind}) has fixed labels"
            if params.labels:
                raise InvalidInput("labels", f"{fixed}; request labels apply to zero_shot classifiers only")
            if params.label_set:
                raise InvalidInput("label_set", f"{fixed}; label sets apply to zero_shot classifiers only")
            if params.temperature:
                raise InvalidInput("temperature", f"applies to zero_shot classifiers only (kind={self.kind})")
            if self.kind == "linear_head":
                assert self.head is not None
                return _LabelChoice(self.head.labels, self.head.fingerprint())
            return _LabelChoice(model.labels, "model:" + ",".join(model.labels))
        if params.labels and params.label_set:
            raise InvalidInput("labels", "give labels or label_set, not both")
        if params.labels:
            check_request_labels(params.labels, self.config.max_labels_per_request, self.config.limits)
            labels = tuple(params.labels)
        else:
            name = params.label_set or self.config.default_label_set
            found = self.label_sets.get(name)
            if found is None:
                raise InvalidInput(
                    "label_set",
                    f"unknown label set {name!r}; configured label sets: {sorted(self.label_sets)}",
                )
            labels = found
        return _LabelChoice(tuple(label.name for label in labels), labels_fingerprint(labels), labels)

    def _temperature(self, params: ClassifyParams) -> float:
        if self.kind != "zero_shot":
            return 1.0
        if params.temperature == 0:
            return self.config.temperature
        if not math.isfinite(params.temperature) or not 0 < params.temperature <= 100:
            raise InvalidInput(
                "temperature", f"must be in (0, 100] or 0 for the default; got {params.temperature}"
            )
        return float(params.temperature)

    async def classify(self, params: ClassifyParams, deadline: float | None = None) -> ClassifyResult:
        """Scores every text against every label; raises the error kinds of core/errors.py."""
        started = time.perf_counter()
        if not self._started:
            raise NotReady("classifier is still loading")
        limits = self.config.limits
        check_texts(params.texts, limits)
        if params.top_k < 0:
            raise InvalidInput("top_k", f"must be 0 (all labels) or positive; got {params.top_k}")
        temperature = self._temperature(params)
        model = await self.source.describe(deadline)
        choice = self._choose_labels(params, model)
        truncate = limits.truncate if params.truncate is None else params.truncate
        count = len(params.texts)
        logits: list[np.ndarray | None] = [None] * count
        tokens = [0] * count
        truncated = [False] * count
        keys: list[str] = []
        use_cache = self.cache is not None and not params.skip_cache
        if use_cache:
            assert self.cache is not None
            keys = [
                self.cache.key(model.name, model.revision, self.kind, choice.fingerprint, truncate, text)
                for text in params.texts
            ]
            for index, value in enumerate(await self.cache.get_many(keys)):
                entry = decode_entry(value, len(choice.names))
                if entry is not None:
                    logits[index], tokens[index], truncated[index] = entry
        hits = sum(row is not None for row in logits)
        result = ClassifyResult([], model, tokens, truncated, cached=hits)
        misses = [index for index in range(count) if logits[index] is None]
        if misses:
            computed, vectors = await self._logits(
                [params.texts[i] for i in misses], choice, model, deadline, params.truncate, params.skip_cache
            )
            for row, index in enumerate(misses):
                logits[index] = computed[row]
                tokens[index] = vectors.tokens[row]
                truncated[index] = vectors.truncated[row]
            result.cached += vectors.cached
            result.tokenize_seconds = vectors.tokenize_seconds
            result.queue_seconds = vectors.queue_seconds
            result.inference_seconds = vectors.inference_seconds
            if use_cache:
                assert self.cache is not None
                self.cache.put_many(
                    [
                        (keys[index], encode_entry(computed[row], tokens[index], truncated[index]))
                        for row, index in enumerate(misses)
                    ]
                )
        stacked = np.stack([row for row in logits if row is not None])
        scores = softmax(stacked, temperature)
        for row in range(count):
            ranked = rank(choice.names, scores[row], params.top_k)
            result.classifications.append(
                TextClassification(ranked, ranked[0][0], [float(v) for v in stacked[row]])
            )
        result.total_seconds = time.perf_counter() - started
        return result

    async def _logits(
        self,
        texts: list[str],
        choice: _LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> tuple[np.ndarray, Vectors]:
        """[texts, labels] logits of the texts the cache did not have."""
        if self.kind == "zero_shot":
            prototypes = await self.prototypes.prototypes(choice.zero_shot, model.revision, deadline)
            vectors = await self.source.embed(texts, deadline, truncate, skip_cache)
            if vectors.values.shape[1] != prototypes.shape[1]:
                # The embedding service changed model under us: prototypes must be rebuilt.
                fresh = await self.source.describe(deadline)
                prototypes = await self.prototypes.prototypes(choice.zero_shot, fresh.revision, deadline)
            return cosine_logits(vectors.values, prototypes), vectors
        vectors = await self.source.embed(texts, deadline, truncate, skip_cache)
        if self.kind == "linear_head":
            assert self.head is not None
            if vectors.values.shape[1] != self.head.dimensions:
                self._check_head(await self.source.describe(deadline))
            return self.head.logits(vectors.values), vectors
        if vectors.values.shape[1] != len(choice.names):
            raise BackendFailure(
                f"model gave {vectors.values.shape[1]} logits for {len(choice.names)} labels"
            )
        return vectors.values, vectors
