"""A linear head over unit-length embeddings: logits = W x + b, saved as safetensors.

The file (written by `textserve train-classifier`) holds `weight` [labels, dim] and
`bias` [labels] as float32, and in its metadata the label names (JSON list, logit order),
the embedding model it was trained on (name, revision, dimensions) and the held-out
evaluation of training. Loading checks shapes and metadata and fails with the file's path.
`LinearHeadScorer` is the linear_head kind's scorer (scoring.py): the head over unit
embeddings from a VectorSource.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textserve.classifier.scoring import (
    FixedLabels,
    Kind,
    LabelChoice,
    LabelInfo,
    ScoreCall,
    Scores,
    SourceScorer,
    scores_of,
)
from textserve.classifier.vector_source import EncoderDescription, VectorSource
from textserve.core.errors import BackendFailure

log = logging.getLogger(__name__)

FORMAT = "textserve-linear-head/1"


class HeadFileError(ValueError):
    """The head file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class LinearHead:
    """Weights, bias and label names of a trained head, with the model it expects."""

    weight: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]
    model_name: str
    model_revision: str
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"weight {self.weight.shape} and bias {self.bias.shape} do not match")
        if len(self.labels) != self.weight.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.weight.shape[0]} weight rows")

    @property
    def dimensions(self) -> int:
        """Length of the vectors the head takes."""
        return int(self.weight.shape[1])

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """[texts, labels] logits of unit-length vectors."""
        return (vectors.astype(np.float32, copy=False) @ self.weight.T + self.bias).astype(
            np.float32, copy=False
        )

    def fingerprint(self) -> str:
        """Content hash of weights, bias and labels (part of the classifier's cache keys)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.weight, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(self.bias, dtype="<f4").tobytes())
        digest.update(json.dumps(list(self.labels)).encode())
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        """Writes the head as safetensors with its labels and model in the metadata."""
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "labels": json.dumps(list(self.labels)),
            "model_name": self.model_name,
            "model_revision": self.model_revision,
            "dimensions": str(self.dimensions),
            "metrics": json.dumps(self.metrics),
        }
        tensors = {
            "weight": np.ascontiguousarray(self.weight, dtype=np.float32),
            "bias": np.ascontiguousarray(self.bias, dtype=np.float32),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        """Reads a head written by `save`; HeadFileError names the file and the problem."""
        from safetensors import safe_open

        if not path.is_file():
            raise HeadFileError(f"classifier.head_path={str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                names = set(handle.keys())
                if not {"weight", "bias"} <= names:
                    raise HeadFileError(f"{path}: needs tensors 'weight' and 'bias', has {sorted(names)}")
                weight = np.asarray(handle.get_tensor("weight"), dtype=np.float32)
                bias = np.asarray(handle.get_tensor("bias"), dtype=np.float32)
        except HeadFileError:
            raise
        except Exception as exc:
            raise HeadFileError(f"{path}: not a readable safetensors file: {exc}") from exc
        if metadata.get("format") != FORMAT:
            raise HeadFileError(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
        try:
            labels = tuple(str(name) for name in json.loads(metadata["labels"]))
            metrics = {str(k): float(v) for k, v in json.loads(metadata.get("metrics", "{}")).items()}
            return cls(
                weight,
                bias,
                labels,
                metadata.get("model_name", ""),
                metadata.get("model_revision", ""),
                metrics,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise HeadFileError(f"{path}: inconsistent head: {exc}") from exc


class HeadMismatch(BackendFailure):
    """The linear head was trained on vectors of another size than the model gives."""


class LinearHeadScorer(FixedLabels, SourceScorer):
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

    def fixed_choice(self, model: EncoderDescription) -> LabelChoice:
        head = self._head()
        return LabelChoice(head.labels, head.fingerprint())

    async def score(self, call: ScoreCall, choice: LabelChoice, model: EncoderDescription) -> Scores:
        head = self._head()
        vectors = await call.vectors(self.source)
        if vectors.values.shape[1] != head.dimensions:
            self._check(await self.source.describe(call.deadline))
        return scores_of(head.logits(vectors.values), vectors)
