"""The classifier service's settings (the `classifier` section), with the default label set.

The default `sentiment` label set (names, descriptions, example texts) is what zero-shot
classification serves when no config names other labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from textserve.core.config import (
    BatcherConfig,
    ConfigSection,
    LimitsConfig,
    ModelConfig,
    ModelRepositoryConfig,
    ServerConfig,
    ServiceConfigBase,
)
from textserve.quality.config import QualityConfig
from textserve.tuning.config import TuningConfig


class LabelConfig(ConfigSection):
    """One label of a zero-shot label set."""

    name: str = Field(min_length=1)
    """Label name."""
    description: str = ""
    """Text describing the label; embedded into its prototype."""
    examples: list[str] = Field(default_factory=list)
    """Example texts; embedded and averaged into its prototype."""


def default_label_sets() -> dict[str, list[LabelConfig]]:
    """The label sets zero-shot serves when the config names none: `sentiment`, with sample texts."""
    return {
        "sentiment": [
            LabelConfig(
                name="positive",
                description="This text expresses a positive, happy or approving opinion.",
                examples=[
                    "I love this, it is wonderful.",
                    "Great job, very happy with it.",
                    "Thank you so much, this made my day!",
                    "Excellent quality, I highly recommend it.",
                ],
            ),
            LabelConfig(
                name="negative",
                description="This text expresses a negative, angry or disapproving opinion.",
                examples=[
                    "I hate this, it is terrible.",
                    "Awful experience, very disappointed.",
                    "It broke after one day, a complete waste of money.",
                    "The worst service I have ever had.",
                ],
            ),
            LabelConfig(
                name="neutral",
                description="This text states a plain fact without any opinion.",
                examples=[
                    "The meeting is at 3 pm.",
                    "The package contains two items.",
                    "The office is on the second floor.",
                    "The bus departs every twenty minutes.",
                    "The document was updated on Monday.",
                    "The form has three sections.",
                ],
            ),
        ]
    }


class EntitiesConfig(ConfigSection):
    """Entity extraction of a token_classification classifier (ExtractEntities)."""

    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "simple"
    """How tokens become entities when a request leaves it unspecified (transformers' pipeline strategies)."""
    stride: int = Field(default=16, ge=0, le=4096)
    """Tokens shared by consecutive windows of a text longer than the model's window
    (a request's 0); must stay below the window length minus the special tokens."""
    max_windows_per_text: int = Field(default=64, ge=1, le=100_000)
    """Most windows one text may take; a longer text is INVALID_ARGUMENT."""


class ClassifierServiceConfig(ServiceConfigBase):
    """Classifier service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50053))
    kind: Literal["zero_shot", "sequence_classification", "linear_head", "token_classification"] = "zero_shot"
    """How texts are classified (token_classification: named entities through ExtractEntities)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Embedding model (zero_shot, linear_head) or sequence-classification model."""
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    """Dynamic batching (in-process model)."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    embedding_address: str = ""
    """host:port of an embedding service to get vectors from; empty embeds in-process."""
    label_sets: dict[str, list[LabelConfig]] = Field(default_factory=default_label_sets)
    """Zero-shot label sets by name."""
    default_label_set: str = "sentiment"
    """Label set used when a request names none."""
    temperature: float = Field(default=0.05, gt=0.0, le=100.0)
    """Zero-shot softmax temperature over cosine similarities."""
    head_path: Path | None = None
    """linear_head: safetensors file written by `textserve train-classifier`."""
    max_labels_per_request: int = Field(default=64, ge=2, le=10_000)
    """zero_shot: most labels a request may bring (their descriptions and examples count as texts)."""
    prototype_cache_entries: int = Field(default=4096, ge=1, le=10_000_000)
    """zero_shot: label prototype vectors kept in memory (least recently used are dropped)."""
    embedding_calls_in_flight: int = Field(default=4, ge=0, le=10_000)
    """With embedding_address: Embed calls in flight at once; texts of requests arriving meanwhile
    go out merged in the next call (fewer, larger calls under load). 0: one call per request."""
    embedding_call_max_texts: int = Field(default=64, ge=1, le=100_000)
    """With embedding_address: most texts in one merged Embed call (keep <= the embedding limit)."""
    embedding_wait_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    """With embedding_address: at start, how long to wait for the embedding service to answer
    before reporting SERVING anyway (requests then get UNAVAILABLE until it is reachable)."""
    tuned_budget_file: Path | None = None
    """Batch budget written by `textserve tune classifier`; overrides batcher sizes when present.
    Applies to the classifier's own in-process model only: with embedding_address, or when
    sharing the embedding service's model in `serve all`, the embedding service's budget applies."""
    autotune: bool = False
    """Measure the in-process model's batch budget at start (as `textserve tune classifier`)
    before serving; like tuned_budget_file, not used when the embedding service's model is used."""
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """How `textserve tune classifier` and autotune measure and choose the batch budget."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Model-quality monitoring: prediction statistics (always), drift detection, feedback, payload log."""
    repository: ModelRepositoryConfig = Field(default_factory=ModelRepositoryConfig)
    """Model versions side by side (lifecycle/): repository layout, version policy, traffic split, shadow."""
    entities: EntitiesConfig = Field(default_factory=EntitiesConfig)
    """token_classification: aggregation strategy, window stride and window limit of ExtractEntities."""

    def queue_bound(self) -> int:
        """The batch queue's bound (the admission bound's default derives from it)."""
        return self.batcher.max_queue_size

    @model_validator(mode="after")
    def _check_label_sets(self) -> ClassifierServiceConfig:
        for set_name, labels in self.label_sets.items():
            if len(labels) < 2:
                raise ValueError(
                    f"classifier.label_sets.{set_name} has {len(labels)} label(s); at least 2 are needed"
                )
            names = [label.name for label in labels]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"classifier.label_sets.{set_name} repeats label names {repeated}")
        return self

    @model_validator(mode="after")
    def _check_kind(self) -> ClassifierServiceConfig:
        if self.kind == "zero_shot" and self.default_label_set not in self.label_sets:
            raise ValueError(
                f"classifier.default_label_set={self.default_label_set!r} is not one of "
                f"classifier.label_sets={sorted(self.label_sets)}"
            )
        if self.kind == "linear_head" and self.head_path is None:
            raise ValueError("classifier.kind='linear_head' needs classifier.head_path")
        return self
