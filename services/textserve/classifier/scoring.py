"""What every classifier kind provides: the `Scorer` contract and the types it trades in.

A scorer knows a kind's labels (fixed, or chosen per request for zero_shot) and turns
texts into [texts, labels] logits; the service logic (service.py) does validation, the
response cache, softmax and ranking around it. The scorers: ZeroShotScorer (zero_shot.py),
LinearHeadScorer (linear_head.py), SequenceClassificationScorer
(sequence_classification.py); kinds.py builds the configured one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from textserve.classifier.vector_source import (
    Accounting,
    EncoderDescription,
    ModelHome,
    Vectors,
    VectorSource,
    accounting_of,
    home_of,
)
from textserve.core.errors import InvalidInput

if TYPE_CHECKING:
    from textserve.classifier.zero_shot import Label

SERVICE = "classifier"

Kind = Literal["zero_shot", "sequence_classification", "linear_head", "token_classification"]


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
class Scores(Accounting):
    """[texts, labels] logits with token accounting and where time went (`cached`: texts
    whose vectors came from the embedding response cache)."""

    logits: np.ndarray
    tokens: list[int]
    truncated: list[bool]


@dataclass(frozen=True)
class ScoreCall:
    """The texts of one scorer call, with the request's deadline, truncation (None: the
    limits' default) and whether to skip the embedding response cache."""

    texts: list[str]
    deadline: float | None
    truncate: bool | None
    skip_cache: bool

    async def vectors(self, source: VectorSource) -> Vectors:
        """The texts' vectors from `source`."""
        return await source.embed(self.texts, self.deadline, self.truncate, self.skip_cache)


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

    async def score(self, call: ScoreCall, choice: LabelChoice, model: EncoderDescription) -> Scores:
        """Logits of each text for each chosen label."""
        ...


def check_fixed_labels(kind: Kind, labels: Sequence[Label], label_set: str, temperature: float) -> None:
    """Kinds with fixed labels take no label options."""
    fixed = f"this classifier (kind={kind}) has fixed labels"
    if labels:
        raise InvalidInput("labels", f"{fixed}; request labels apply to zero_shot classifiers only")
    if label_set:
        raise InvalidInput("label_set", f"{fixed}; label sets apply to zero_shot classifiers only")
    if temperature:
        raise InvalidInput("temperature", f"applies to zero_shot classifiers only (kind={kind})")


class FixedLabels:
    """The label options of the kinds whose labels are fixed (by a head file or the model):
    none, and softmax at temperature 1."""

    kind: Kind

    def temperature(self, requested: float) -> float:
        return 1.0

    def choose(
        self, labels: Sequence[Label], label_set: str, temperature: float, model: EncoderDescription
    ) -> LabelChoice:
        check_fixed_labels(self.kind, labels, label_set, temperature)
        return self.fixed_choice(model)

    def fixed_choice(self, model: EncoderDescription) -> LabelChoice:
        """The fixed labels and their fingerprint."""
        raise NotImplementedError


class SourceScorer:
    """Lifecycle and description of the scorers that take vectors from a VectorSource."""

    location: str

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


def scores_of(logits: np.ndarray, vectors: Vectors) -> Scores:
    """Logits computed from vectors, with the vectors' accounting."""
    return Scores(logits, vectors.tokens, vectors.truncated, **accounting_of(vectors))
