"""Classifier logic: validate, choose the labels, cache-through, softmax, rank.

Three kinds, chosen by `classifier.kind`, each a scorer (scoring.py) built once at
construction (kinds.py): sequence_classification (a Hugging Face sequence-classification model run
in-process by a runtime Encoder), zero_shot (cosine similarity of unit embeddings to label
prototypes) and linear_head (a head trained by `textserve train-classifier`).

Each text's logits (before the softmax) go through the response cache
(core/cache_through.py: identical texts in flight are scored once) under a key made of
the model name and revision (and a precision other than fp32), the kind, the label set's
content, the truncation choice and the text. Temperature is applied after the cache, so
requests at different temperatures share entries. Knows nothing of protobuf (convert.py).

Model quality (quality/recorder.py): after each Classify over a configured label set, the
top label and score of each text go to the prediction statistics, the drift windows (the
default label set only) and, with feedback on, the prediction store under the request's
x-request-id and the text's index; `feedback` joins ground truth with them. Predictions
over labels a request brings are not recorded (their names are request data, not the
model's). Model = the model name, version = its revision.

Model versions (lifecycle/, classifier/versions.py): one scorer per version in a
VersionManager (one, "1", without a model repository); each Classify is routed to a version,
the version is part of the cache key and of the result; a shadow version re-classifies a share
of requests after the primary answered and records top-label agreement.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.entities import EntitiesParams, EntitiesResult, EntityExtractor
from textserve.classifier.kinds import build_scorer
from textserve.classifier.linear_head import HeadMismatch, LinearHeadScorer
from textserve.classifier.scoring import SERVICE, Kind, ScoreCall, Scorer
from textserve.classifier.token_classification import TokenClassificationScorer
from textserve.classifier.vector_source import Accounting, EncoderDescription, VectorSource
from textserve.classifier.versions import ScorerVersion, configured_model_name, version_config
from textserve.classifier.zero_shot import Label, ZeroShotScorer
from textserve.core.cache import ResponseCache
from textserve.core.cache_through import CacheThrough
from textserve.core.config import CacheConfig, ConfigError
from textserve.core.errors import InvalidInput, NotReady, TextserveError
from textserve.core.validation import MAX_REQUEST_ID_CHARS, check_texts
from textserve.lifecycle.manager import VersionManager, error_code_name
from textserve.quality.feedback import FeedbackResult
from textserve.quality.recorder import QualityRecorder
from textserve.runtime.encoder_engine import Encoder

log = logging.getLogger(__name__)


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
    request_id: str = ""
    """The call's x-request-id: its predictions are kept for feedback under it (when on)."""
    model_version: str = ""
    """Version to serve this request; empty: the traffic split decides."""
    routing_key: str = ""
    """Requests with the same key reach the same version while the weights stand."""


@dataclass(frozen=True)
class FeedbackParams:
    """Ground truth for one text of an earlier Classify call."""

    request_id: str
    index: int
    label: str


@dataclass(frozen=True)
class TextClassification:
    """One text's scores (best first, top_k cut), best label and logits in label order."""

    scores: list[tuple[str, float]]
    top_label: str
    logits: list[float]


@dataclass
class ClassifyResult(Accounting):
    """Classifications with token accounting and where time went."""

    classifications: list[TextClassification]
    model: EncoderDescription
    tokens: list[int]
    truncated: list[bool]
    total_seconds: float = 0.0
    version: str = ""
    """The model version that served the request."""


@dataclass(frozen=True)
class ClassifierDescription:
    """What ClassifierInfo reports."""

    kind: Kind
    model: EncoderDescription
    labels: tuple[str, ...]
    label_sets: tuple[str, ...]
    max_labels_per_request: int
    default_temperature: float
    version: str = ""
    """The model version described (the primary one)."""


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


@dataclass(frozen=True)
class _Scored:
    """One text's logits with its token accounting (what the response cache holds)."""

    logits: np.ndarray
    tokens: int
    truncated: bool


class _ScoredCodec:
    """Cache entries of one label count (encode_entry / decode_entry)."""

    def __init__(self, n_labels: int) -> None:
        self.n_labels = n_labels

    def encode(self, value: _Scored) -> bytes:
        return encode_entry(value.logits, value.tokens, value.truncated)

    def decode(self, entry: bytes) -> _Scored | None:
        decoded = decode_entry(entry, self.n_labels)
        return None if decoded is None else _Scored(*decoded)


class ClassifierService:
    """The classifier request logic over the scorer of its kind and the logits' cache."""

    def __init__(
        self,
        config: ClassifierServiceConfig,
        cache: ResponseCache | None = None,
        source: VectorSource | None = None,
        token: str | None = None,
        *,
        encoder: Encoder | None = None,
        cache_config: CacheConfig | None = None,
    ) -> None:
        """`source` replaces the configured vector source; `encoder` is the Encoder of the
        embedding app of this process (`serve all`), which that app starts and stops;
        `cache_config` gives the Redis of the feedback store and payload log (quality)."""
        self.config = config
        self.kind: Kind = config.kind

        self._default: ScorerVersion | None = None
        if config.repository.path is None:  # built now: the one version's scorer exists before start
            self._default = ScorerVersion(build_scorer(config, source, token, encoder), self._start_scorer)

        def build(version: str, folder: Path | None) -> ScorerVersion:
            if folder is None:
                assert self._default is not None
                return self._default
            scorer = build_scorer(version_config(config, folder), None, token, version=version)
            return ScorerVersion(scorer, self._start_scorer)

        self.versions: VersionManager[ScorerVersion] = VersionManager(
            SERVICE, configured_model_name(config), config.repository, build, code_of=error_code_name
        )
        self.results: CacheThrough[_Scored] = CacheThrough(cache if config.cache_enabled else None, SERVICE)
        self.quality = QualityRecorder(config.quality, service=SERVICE, cache=cache_config)
        self.entities: EntityExtractor | None = None
        """Entity extraction (kind token_classification only; entities.py)."""
        if config.kind == "token_classification":
            if self._default is None:
                raise ConfigError(
                    "classifier.repository.path: model versions are not supported for kind "
                    "token_classification yet; serve one NER model per release"
                )
            scorer = self._default.scorer
            assert isinstance(scorer, TokenClassificationScorer)
            self.entities = EntityExtractor(scorer.encoder, config, self.results.cache)
        self._started = False

    def set_code_names(self, code_of: Callable[[BaseException | None], str]) -> None:
        """How the per-version request counter names an outcome (the app passes gRPC status names)."""
        self.versions.code_of = code_of

    @property
    def scorer(self) -> Scorer:
        """The scorer of the primary version (the one ClassifierInfo describes); NotReady when none is."""
        if self._default is not None:
            return self._default.scorer
        runtime = self.versions.primary().runtime
        if runtime is None:
            raise NotReady("classifier is still loading")
        return runtime.scorer

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache of the logits (None when off)."""
        return self.results.cache

    @property
    def source(self) -> VectorSource | None:
        """Where the scorer gets vectors (None for sequence_classification, which predicts)."""
        scorer = self.scorer
        if isinstance(scorer, ZeroShotScorer | LinearHeadScorer):
            return scorer.source
        return None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the head and the in-process model, or waits (bounded) for the embedding service;
        then checks the head against the model and embeds the default label set."""
        await self.quality.start()
        await self.versions.start()
        if self.entities is not None:
            self.entities.check()
        self._started = True
        log.info(
            "classifier ready",
            extra={"service": SERVICE, "kind": self.kind, "versions": self.versions.serving()},
        )

    async def _start_scorer(self, scorer: Scorer) -> None:
        """Loads one version's scorer; checks it against its model, or waits for the embedding service."""
        await scorer.start()
        if scorer.home == "owned":
            await scorer.warm_up(None)
        else:
            await self._wait_for_embedding(scorer)
        log.info("classifier version loaded", extra={"service": SERVICE, "vectors": scorer.location})

    async def _wait_for_embedding(self, scorer: Scorer) -> None:
        """Retries the warm-up while the embedding service is unreachable or loading, for at
        most embedding_wait_s; then serves anyway (requests get UNAVAILABLE until it is back).
        An embedding model shared in this process is waited for until it is loaded."""
        shared = scorer.home == "shared"
        give_up = math.inf if shared else time.monotonic() + self.config.embedding_wait_s
        while True:
            try:
                await scorer.warm_up(
                    None if shared else min(give_up, time.monotonic() + self.config.client.timeout_s)
                )
                return
            except HeadMismatch:
                raise
            except TextserveError as error:
                if time.monotonic() >= give_up:
                    log.warning(
                        "embedding service not reachable at start; serving anyway",
                        extra={"service": SERVICE, "address": scorer.location, "error": error.message},
                    )
                    return
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        """Stops the in-process model or closes the channel, then the cache and the quality parts."""
        await self.versions.stop()
        await self.results.close()  # the entities share this cache
        await self.quality.close()

    # --- description ---------------------------------------------------------------------
    async def describe(self, deadline: float | None = None) -> ClassifierDescription:
        """Kind, model, default labels and label sets."""
        if not self._started:
            raise NotReady("classifier is still loading")
        scorer = self.scorer
        model = await scorer.describe(deadline)
        labels = scorer.label_info(model)
        return ClassifierDescription(
            kind=self.kind,
            model=model,
            labels=labels.labels,
            label_sets=labels.label_sets,
            max_labels_per_request=labels.max_labels_per_request,
            default_temperature=labels.default_temperature,
            version=self.versions.primary().version,
        )

    # --- the request path ----------------------------------------------------------------
    async def classify(self, params: ClassifyParams, deadline: float | None = None) -> ClassifyResult:
        """Scores every text against every label with the routed version; raises the error kinds
        of core/errors.py."""
        started = time.perf_counter()
        if not self._started or not self.versions.ready:
            raise NotReady("classifier is still loading")
        async with self.versions.route(params.model_version, params.routing_key) as slot:
            assert slot.runtime is not None
            result = await self._classify(slot.runtime.scorer, slot.version, params, deadline, started)
        result.version = slot.version
        if not params.labels:
            self._record(params, result.model, result.classifications)
        self.versions.mirror(slot.version, lambda shadow, until: self._shadow(shadow, params, result, until))
        return result

    async def _shadow(
        self, shadow: ScorerVersion, params: ClassifyParams, primary: ClassifyResult, deadline: float
    ) -> float:
        """The same request on the shadow version (not recorded): the share of texts whose top
        label agrees with the primary's."""
        shadow_version = self.versions.routing.shadow_version
        result = await self._classify(shadow.scorer, shadow_version, params, deadline, time.perf_counter())
        pairs = zip(primary.classifications, result.classifications, strict=True)
        return sum(a.top_label == b.top_label for a, b in pairs) / max(1, len(primary.classifications))

    async def _classify(
        self, scorer: Scorer, version: str, params: ClassifyParams, deadline: float | None, started: float
    ) -> ClassifyResult:
        limits = self.config.limits
        check_texts(params.texts, limits)
        if params.top_k < 0:
            raise InvalidInput("top_k", f"must be 0 (all labels) or positive; got {params.top_k}")
        temperature = scorer.temperature(params.temperature)
        model = await scorer.describe(deadline)
        choice = scorer.choose(params.labels, params.label_set, params.temperature, model)
        truncate = limits.truncate if params.truncate is None else params.truncate
        result = ClassifyResult([], model, [], [])

        async def compute(indices: list[int]) -> list[_Scored]:
            call = ScoreCall([params.texts[i] for i in indices], deadline, params.truncate, params.skip_cache)
            scores = await scorer.score(call, choice, model)
            result.cached += scores.cached
            result.tokenize_seconds = scores.tokenize_seconds
            result.queue_seconds = scores.queue_seconds
            result.inference_seconds = scores.inference_seconds
            return [
                _Scored(scores.logits[row], scores.tokens[row], scores.truncated[row])
                for row in range(len(indices))
            ]

        # A reduced precision scores differently: its entries never meet fp32 ones (fp32 keys unchanged).
        precise = model.precision in ("", "fp32")
        revision = model.revision if precise else f"{model.revision}|{model.precision}"
        keys = [
            self.results.key(model.name, revision, version, self.kind, choice.fingerprint, truncate, text)
            for text in params.texts
        ]
        items = await self.results.run(
            keys,
            compute,
            _ScoredCodec(len(choice.names)),
            deadline,
            skip_cache=params.skip_cache,
            model=model.name,
            version=version,
        )
        result.cached += sum(item.cached for item in items)
        result.tokens = [item.value.tokens for item in items]
        result.truncated = [item.value.truncated for item in items]
        stacked = np.stack([item.value.logits for item in items])
        scores = softmax(stacked, temperature)
        for row in range(len(items)):
            ranked = rank(choice.names, scores[row], params.top_k)
            result.classifications.append(
                TextClassification(ranked, ranked[0][0], [float(v) for v in stacked[row]])
            )
        result.total_seconds = time.perf_counter() - started
        return result

    def _record(
        self, params: ClassifyParams, model: EncoderDescription, classifications: list[TextClassification]
    ) -> None:
        """Hands the predictions to the quality recorder (never raises, never waits)."""
        default_set = not params.label_set or params.label_set == self.config.default_label_set
        self.quality.classified(
            model.name,
            model.revision,
            [item.top_label for item in classifications],
            [item.scores[0][1] for item in classifications],
            request_id=params.request_id,
            texts=params.texts,
            drift=default_set,
        )

    async def extract_entities(self, params: EntitiesParams, deadline: float | None = None) -> EntitiesResult:
        """Named entities of every text (kind token_classification; InvalidInput for other kinds)."""
        if not self._started:
            raise NotReady("classifier is still loading")
        if self.entities is None:
            raise InvalidInput(
                "texts",
                f"this classifier (kind={self.kind}) classifies texts; "
                "entities need kind token_classification",
            )
        return await self.entities.extract(params, deadline)

    async def feedback(self, params: FeedbackParams, deadline: float | None = None) -> FeedbackResult:
        """Joins the true label of one earlier prediction: JOINED, or DUPLICATE when it was joined
        before; NotFound for an unknown or expired prediction, InvalidInput for a label the
        classifier does not have."""
        if not self._started:
            raise NotReady("classifier is still loading")
        if not params.request_id:
            raise InvalidInput(
                "request_id", "must be the x-request-id of the Classify call; got an empty one"
            )
        if len(params.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInput(
                "request_id", f"has {len(params.request_id)} characters; at most {MAX_REQUEST_ID_CHARS}"
            )
        if params.index < 0 or params.index >= self.config.limits.max_texts_per_request:
            raise InvalidInput(
                "text_index",
                f"must be in [0, {self.config.limits.max_texts_per_request}); got {params.index}",
            )
        known = await self.known_labels(deadline)
        if params.label not in known:
            raise InvalidInput(
                "label", f"{params.label!r} is not a label of this classifier: {sorted(known)}"
            )
        return await self.quality.feedback(params.request_id, params.index, params.label)

    async def known_labels(self, deadline: float | None = None) -> frozenset[str]:
        """Every label a recorded prediction can have: the fixed labels, or those of every configured set."""
        if self.kind == "zero_shot":
            return frozenset(label.name for labels in self.config.label_sets.values() for label in labels)
        scorer = self.scorer
        model = await scorer.describe(deadline)
        return frozenset(scorer.label_info(model).labels)
