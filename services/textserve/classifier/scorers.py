"""One scorer per classifier kind: what the labels are and how texts get their logits.

`Scorer` is the contract the service logic calls; `build_scorer` picks the one of
`classifier.kind`, once, at construction:
- `ZeroShotScorer`: cosine similarity of unit embeddings to label prototypes
  (zero_shot.py); requests may name a configured label set or bring their own labels,
  and choose the softmax temperature.
- `LinearHeadScorer`: a head trained by `textserve train-classifier` (linear_head.py)
  over unit embeddings.
- `SequenceClassificationScorer`: the logits of a Hugging Face sequence-classification
  model, run in-process by a runtime Encoder (`predict`).
The first two get vectors from a VectorSource: the embedding service when
`embedding_address` is set, else an in-process Encoder (vector_source.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from textserve.classifier.linear_head import LinearHead
from textserve.classifier.merging import MergingVectorSource
from textserve.classifier.vector_source import (
    EncoderDescription,
    LocalVectorSource,
    ModelHome,
    RemoteVectorSource,
    VectorSource,
    describe_encoder,
    encode_texts,
    home_of,
)
from textserve.classifier.zero_shot import (
    Label,
    PrototypeBank,
    check_request_labels,
    cosine_logits,
    labels_fingerprint,
)
from textserve.core.config import ClassifierServiceConfig, LimitsConfig
from textserve.core.errors import BackendFailure, InvalidInput
from textserve.runtime.encoder import Task
from textserve.runtime.encoder_engine import Encoder, EncoderOptions

log = logging.getLogger(__name__)

SERVICE = "classifier"

Kind = Literal["zero_shot", "sequence_classification", "linear_head"]


@dataclass(frozen=True)
class LabelChoice:
    """The labels a request is scored against."""

    names: tuple[str, ...]
    fingerprint: str
    """Content hash of the labels (part of the response-cache key)."""
    zero_shot: tuple[Label, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LabelInfo:
    """What ClassifierInfo tells about the labels of a kind."""

    labels: tuple[str, ...]
    label_sets: tuple[str, ...] = ()
    max_labels_per_request: int = 0
    default_temperature: float = 0.0


@dataclass
class Scores:
    """[texts, labels] logits with token accounting and where time went."""

    logits: np.ndarray
    tokens: list[int]
    truncated: list[bool]
    cached: int = 0
    """Texts whose vectors came from the embedding response cache."""
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0


class HeadMismatch(BackendFailure):
    """The linear head was trained on vectors of another size than the model gives."""


class Scorer(Protocol):
    """What the classifier logic needs from a kind."""

    kind: Kind
    location: str
    """Where the model runs ("in-process" or the embedding service's address), for logs and errors."""

    @property
    def home(self) -> ModelHome:
        """Whether the model is loaded here, by another app of this process, or elsewhere."""
        ...

    async def start(self) -> None:
        """Loads what the kind needs (head file, in-process model)."""
        ...

    async def stop(self) -> None:
        """Stops the in-process model or closes the channel."""
        ...

    async def describe(self, deadline: float | None) -> EncoderDescription:
        """The model behind the logits; NotReady while it loads or is unreachable."""
        ...

    async def warm_up(self, deadline: float | None) -> None:
        """Checks the model (HeadMismatch) and prepares the default labels."""
        ...

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        """The default labels and the label options requests have."""
        ...

    def temperature(self, requested: float) -> float:
        """The softmax temperature of a request (0: the default)."""
        ...

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        """The labels a request is scored against; InvalidInput for options the kind lacks."""
        ...

    async def score(
        self,
        texts: list[str],
        choice: LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Scores:
        """Logits of each text for each chosen label."""
        ...


def _fixed_labels(kind: Kind, labels: Sequence[Label], label_set: str, temperature: float) -> None:
    """Kinds with fixed labels take no label options."""
    fixed = f"this classifier (kind={kind}) has fixed labels"
    if labels:
        raise InvalidInput("labels", f"{fixed}; request labels apply to zero_shot classifiers only")
    if label_set:
        raise InvalidInput("label_set", f"{fixed}; label sets apply to zero_shot classifiers only")
    if temperature:
        raise InvalidInput("temperature", f"applies to zero_shot classifiers only (kind={kind})")


class _OverSource:
    """Lifecycle and description of the scorers that take vectors from a VectorSource."""

    def __init__(self, source: VectorSource) -> None:
        self.source = source
        self.location = source.location

    @property
    def home(self) -> ModelHome:
        return home_of(self.source)

    async def stop(self) -> None:
        await self.source.stop()

    async def describe(self, deadline: float | None) -> EncoderDescription:
        return await self.source.describe(deadline)


class ZeroShotScorer(_OverSource):
    """Cosine similarity to label prototypes (see zero_shot.py)."""

    kind: Kind = "zero_shot"

    def __init__(self, config: ClassifierServiceConfig, source: VectorSource) -> None:
        super().__init__(source)
        self.config = config
        self.prototypes = PrototypeBank(source, config.prototype_cache_entries)
        self.label_sets: dict[str, tuple[Label, ...]] = {
            name: tuple(Label.from_config(label) for label in labels)
            for name, labels in config.label_sets.items()
        }

    async def start(self) -> None:
        await self.source.start()

    async def warm_up(self, deadline: float | None) -> None:
        description = await self.source.describe(deadline)
        labels = self.label_sets[self.config.default_label_set]
        await self.prototypes.prototypes(labels, description.revision, deadline)

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(
            labels=tuple(label.name for label in self.label_sets[self.config.default_label_set]),
            label_sets=tuple(self.label_sets),
            max_labels_per_request=self.config.max_labels_per_request,
            default_temperature=self.config.temperature,
        )

    def temperature(self, requested: float) -> float:
        if requested == 0:
            return self.config.temperature
        if not math.isfinite(requested) or not 0 < requested <= 100:
            raise InvalidInput("temperature", f"must be in (0, 100] or 0 for the default; got {requested}")
        return float(requested)

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        if labels and label_set:
            raise InvalidInput("labels", "give labels or label_set, not both")
        if labels:
            check_request_labels(labels, self.config.max_labels_per_request, self.config.limits)
            chosen = tuple(labels)
        else:
            name = label_set or self.config.default_label_set
            found = self.label_sets.get(name)
            if found is None:
                raise InvalidInput(
                    "label_set",
                    f"unknown label set {name!r}; configured label sets: {sorted(self.label_sets)}",
                )
            chosen = found
        return LabelChoice(tuple(label.name for label in chosen), labels_fingerprint(chosen), chosen)

    async def score(
        self,
        texts: list[str],
        choice: LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Scores:
        prototypes = await self.prototypes.prototypes(choice.zero_shot, model.revision, deadline)
        vectors = await self.source.embed(texts, deadline, truncate, skip_cache)
        if vectors.values.shape[1] != prototypes.shape[1]:
            # The embedding service changed model under us: prototypes must be rebuilt.
            fresh = await self.source.describe(deadline)
            prototypes = await self.prototypes.prototypes(choice.zero_shot, fresh.revision, deadline)
        return Scores(
            cosine_logits(vectors.values, prototypes),
            vectors.tokens,
            vectors.truncated,
            vectors.cached,
            vectors.tokenize_seconds,
            vectors.queue_seconds,
            vectors.inference_seconds,
        )


class LinearHeadScorer(_OverSource):
    """A trained linear head over unit embeddings (see linear_head.py)."""

    kind: Kind = "linear_head"

    def __init__(self, head_path: Path, source: VectorSource) -> None:
        super().__init__(source)
        self.head_path = head_path
        self.head: LinearHead | None = None

    async def start(self) -> None:
        self.head = await asyncio.to_thread(LinearHead.load, self.head_path)
        await self.source.start()

    def _head(self) -> LinearHead:
        assert self.head is not None, "start() loads the head"
        return self.head

    async def warm_up(self, deadline: float | None) -> None:
        self._check(await self.source.describe(deadline))

    def _check(self, description: EncoderDescription) -> None:
        """HeadMismatch when the model gives vectors of another size than the head takes."""
        head = self._head()
        if head.dimensions != description.dimensions:
            raise HeadMismatch(
                f"linear head {self.head_path} takes {head.dimensions}-dimensional vectors "
                f"(trained on {head.model_name!r}) but {description.name!r} from {self.location} "
                f"gives {description.dimensions}"
            )
        if head.model_name and head.model_name != description.name:
            log.warning(
                "linear head trained on another model",
                extra={"head_model": head.model_name, "serving_model": description.name},
            )

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(self._head().labels)

    def temperature(self, requested: float) -> float:
        return 1.0

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        _fixed_labels(self.kind, labels, label_set, temperature)
        head = self._head()
        return LabelChoice(head.labels, head.fingerprint())

    async def score(
        self,
        texts: list[str],
        choice: LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Scores:
        head = self._head()
        vectors = await self.source.embed(texts, deadline, truncate, skip_cache)
        if vectors.values.shape[1] != head.dimensions:
            self._check(await self.source.describe(deadline))
        return Scores(
            head.logits(vectors.values),
            vectors.tokens,
            vectors.truncated,
            vectors.cached,
            vectors.tokenize_seconds,
            vectors.queue_seconds,
            vectors.inference_seconds,
        )


class SequenceClassificationScorer:
    """The logits of a sequence-classification model run by an in-process Encoder."""

    kind: Kind = "sequence_classification"

    def __init__(self, encoder: Encoder, limits: LimitsConfig, *, owned: bool = True) -> None:
        self.encoder = encoder
        self.limits = limits
        self.owned = owned
        self.location = "in-process" if owned else "embedding service in this process"

    @property
    def home(self) -> ModelHome:
        return "owned" if self.owned else "shared"

    async def start(self) -> None:
        if self.owned:
            await self.encoder.start()

    async def stop(self) -> None:
        if self.owned:
            await self.encoder.stop()

    async def describe(self, deadline: float | None) -> EncoderDescription:
        return describe_encoder(self.encoder)

    async def warm_up(self, deadline: float | None) -> None:
        describe_encoder(self.encoder)

    def label_info(self, model: EncoderDescription) -> LabelInfo:
        return LabelInfo(model.labels)

    def temperature(self, requested: float) -> float:
        return 1.0

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        _fixed_labels(self.kind, labels, label_set, temperature)
        return LabelChoice(model.labels, "model:" + ",".join(model.labels))

    async def score(
        self,
        texts: list[str],
        choice: LabelChoice,
        model: EncoderDescription,
        deadline: float | None,
        truncate: bool | None,
        skip_cache: bool,
    ) -> Scores:
        encoded = await encode_texts(self.encoder, texts, deadline, truncate, self.limits)
        output = await self.encoder.predict(encoded.inputs, deadline, skip_cache=skip_cache)
        logits = np.stack(output.rows).astype(np.float32, copy=False)
        if logits.shape[1] != len(choice.names):
            raise BackendFailure(f"model gave {logits.shape[1]} logits for {len(choice.names)} labels")
        return Scores(
            logits,
            [len(item.ids) for item in encoded.inputs],
            [item.truncated for item in encoded.inputs],
            sum(output.cached),
            encoded.tokenize_seconds,
            output.queue_seconds,
            output.inference_seconds,
        )


# --- building --------------------------------------------------------------------------------
def local_encoder(
    config: ClassifierServiceConfig, task: Task = "embedding", *, autotune: bool | None = None
) -> Encoder:
    """An in-process Encoder of the classifier's model: its batcher and batch-budget tuning,
    no response cache (the classifier caches its logits itself)."""
    options = EncoderOptions(
        model=config.model,
        batcher=config.batcher,
        tuning=config.tuning,
        tuned_budget_file=config.tuned_budget_file,
        autotune=config.autotune if autotune is None else autotune,
    )
    return Encoder(options, None, None, service=SERVICE, task=task)


def build_source(config: ClassifierServiceConfig, token: str | None = None) -> VectorSource:
    """The configured vector source: remote when embedding_address is set, else in-process."""
    if config.embedding_address:
        remote = RemoteVectorSource(config.embedding_address, config.client, token=token, service=SERVICE)
        if config.embedding_calls_in_flight == 0:
            return remote
        return MergingVectorSource(remote, config.embedding_calls_in_flight, config.embedding_call_max_texts)
    return LocalVectorSource(local_encoder(config), config.limits)


def build_scorer(
    config: ClassifierServiceConfig,
    source: VectorSource | None = None,
    token: str | None = None,
    encoder: Encoder | None = None,
) -> Scorer:
    """The scorer of `config.kind`. `source` replaces the configured vector source; `encoder`
    is an Encoder another app of this process owns and shares (`serve all`)."""
    if config.kind == "sequence_classification":
        if source is not None:
            raise ValueError(
                "a sequence_classification classifier runs its own model; it takes no vector source"
            )
        if encoder is not None:
            return SequenceClassificationScorer(encoder, config.limits, owned=False)
        return SequenceClassificationScorer(local_encoder(config, "sequence-classification"), config.limits)
    if source is None:
        source = (
            LocalVectorSource(encoder, config.limits, owned=False)
            if encoder is not None
            else build_source(config, token)
        )
    if config.kind == "linear_head":
        assert config.head_path is not None  # enforced by the config
        return LinearHeadScorer(config.head_path, source)
    return ZeroShotScorer(config, source)
