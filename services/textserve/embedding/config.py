"""The embedding service's settings (the `embedding` section of the configuration)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from textserve.core.config import (
    BatcherConfig,
    LimitsConfig,
    ModelConfig,
    ModelRepositoryConfig,
    ServerConfig,
    ServiceConfigBase,
)
from textserve.quality.config import QualityConfig
from textserve.tuning.config import TuningConfig


class EmbeddingServiceConfig(ServiceConfigBase):
    """Embedding service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50052))
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Embedding model."""
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    """Dynamic batching."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    tokenizer_address: str = ""
    """host:port of a tokenizer service to tokenize through; empty tokenizes in-process."""
    tuned_budget_file: Path | None = None
    """Batch budget written by `textserve tune`; overrides batcher sizes when present."""
    autotune: bool = False
    """Measure the batch budget at start (as `textserve tune`) before serving."""
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """How `textserve tune` and autotune measure and choose the batch budget."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Model-quality monitoring: prediction statistics (always), drift detection, feedback, payload log."""
    repository: ModelRepositoryConfig = Field(default_factory=ModelRepositoryConfig)
    """Model versions side by side (lifecycle/): repository layout, version policy, traffic split, shadow."""

    def queue_bound(self) -> int:
        """The batch queue's bound (the admission bound's default derives from it)."""
        return self.batcher.max_queue_size
