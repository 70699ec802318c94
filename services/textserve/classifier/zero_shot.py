"""Zero-shot classification: labels become prototype vectors; texts are scored by cosine.

A label's prototype is the mean of the unit vectors of its description (or its name when
it has none) and its example texts, scaled back to unit length. A text's logits are its
cosine similarities to the prototypes; the service turns them into scores with a softmax
at a temperature. Prototypes are kept in a bounded LRU keyed by the embedding model's
revision and the label's content, so configured label sets and labels that requests bring
along are embedded once. `ZeroShotScorer` is the zero_shot kind's scorer (scoring.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from textserve.classifier.config import ClassifierServiceConfig, LabelConfig
from textserve.classifier.scoring import (
    Kind,
    LabelChoice,
    LabelInfo,
    ScoreCall,
    Scores,
    SourceScorer,
    scores_of,
)
from textserve.classifier.vector_source import EncoderDescription, VectorSource
from textserve.core.config import LimitsConfig
from textserve.core.errors import InvalidInput
from textserve.core.vectors import unit_rows

# Prototype texts embedded per call to the vector source (well under any service's text limit).
_EMBED_CHUNK = 32


@dataclass(frozen=True)
class Label:
    """A zero-shot label: a name, an optional description and optional example texts."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, config: LabelConfig) -> Label:
        """A configured label."""
        return cls(config.name, config.description, tuple(config.examples))

    def texts(self) -> list[str]:
        """What is embedded into the prototype: the description (else the name), then the examples."""
        return [self.description.strip() or self.name, *self.examples]

    def fingerprint(self) -> str:
        """Content hash: two labels with the same name, description and examples share it."""
        digest = hashlib.sha256()
        for part in (self.name, self.description, *self.examples):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


def labels_fingerprint(labels: Sequence[Label]) -> str:
    """Content hash of a label list, order included (logits follow label order)."""
    digest = hashlib.sha256()
    for label in labels:
        digest.update(label.fingerprint().encode())
    return digest.hexdigest()


def check_request_labels(labels: Sequence[Label], max_labels: int, limits: LimitsConfig) -> None:
    """Labels a request brings: 2..max_labels, named, unique, texts within the limits."""
    if len(labels) < 2:
        raise InvalidInput("labels", f"has {len(labels)} label; at least 2 are needed to choose between")
    if len(labels) > max_labels:
        raise InvalidInput("labels", f"has {len(labels)} labels; max_labels_per_request={max_labels}")
    seen: dict[str, int] = {}
    texts = 0
    for index, label in enumerate(labels):
        if not label.name.strip():
            raise InvalidInput(f"labels[{index}].name", "must not be empty")
        if label.name in seen:
            raise InvalidInput(f"labels[{index}].name", f"{label.name!r} repeats labels[{seen[label.name]}]")
        seen[label.name] = index
        for part, text in [("name", label.name), ("description", label.description)] + [
            (f"examples[{j}]", example) for j, example in enumerate(label.examples)
        ]:
            if len(text) > limits.max_text_chars:
                raise InvalidInput(
                    f"labels[{index}].{part}",
                    f"has {len(text)} characters; max_text_chars={limits.max_text_chars}",
                )
        for j, example in enumerate(label.examples):
            if not example.strip():
                raise InvalidInput(f"labels[{index}].examples[{j}]", "must not be empty or only whitespace")
        texts += len(label.texts())
    if texts > limits.max_texts_per_request:
        raise InvalidInput(
            "labels",
            f"bring {texts} texts to embed (descriptions and examples); "
            f"max_texts_per_request={limits.max_texts_per_request}",
        )


def cosine_logits(vectors: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """[texts, labels] cosine similarities of unit rows."""
    return (unit_rows(vectors) @ prototypes.T).astype(np.float32, copy=False)


class PrototypeBank:
    """Label prototypes, embedded on first use and kept in a bounded LRU."""

    def __init__(self, source: VectorSource, max_entries: int) -> None:
        self._source = source
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def prototypes(self, labels: Sequence[Label], revision: str, deadline: float | None) -> np.ndarray:
        """[labels, dim] unit prototypes for the embedding model at `revision`."""
        keys = [(revision, label.fingerprint()) for label in labels]
        found: dict[tuple[str, str], np.ndarray] = {}
        for key in keys:
            vector = self._entries.get(key)
            if vector is not None:
                self._entries.move_to_end(key)
                found[key] = vector
        missing = [(key, label) for key, label in zip(keys, labels, strict=True) if key not in found]
        if missing:
            texts: list[str] = []
            spans: list[tuple[int, int]] = []
            for _, label in missing:
                start = len(texts)
                texts.extend(label.texts())
                spans.append((start, len(texts)))
            chunks = [texts[i : i + _EMBED_CHUNK] for i in range(0, len(texts), _EMBED_CHUNK)]
            results = await asyncio.gather(
                *(self._source.embed(chunk, deadline, True, False) for chunk in chunks)
            )
            vectors = unit_rows(np.concatenate([result.values for result in results]))
            for (key, _), (start, end) in zip(missing, spans, strict=True):
                prototype = unit_rows(vectors[start:end].mean(axis=0, keepdims=True))[0]
                found[key] = prototype
                self._entries[key] = prototype
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return np.stack([found[key] for key in keys])


class ZeroShotScorer(SourceScorer):
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

    async def score(self, call: ScoreCall, choice: LabelChoice, model: EncoderDescription) -> Scores:
        prototypes = await self.prototypes.prototypes(choice.zero_shot, model.revision, call.deadline)
        vectors = await call.vectors(self.source)
        if vectors.values.shape[1] != prototypes.shape[1]:
            # The embedding service changed model under us: prototypes must be rebuilt.
            fresh = await self.source.describe(call.deadline)
            prototypes = await self.prototypes.prototypes(choice.zero_shot, fresh.revision, call.deadline)
        return scores_of(cosine_logits(vectors.values, prototypes), vectors)
