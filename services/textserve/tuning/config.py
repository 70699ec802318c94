"""How the batch budget is measured and chosen (the `tuning` section of a model service's config)."""

from __future__ import annotations

from pydantic import Field, model_validator

from textserve.core.config import ConfigSection


class TuningConfig(ConfigSection):
    """Measuring the batch budget on the serving device (`textserve tune`, `autotune: true`)."""

    latency_ceiling_ms: float = Field(default=100.0, gt=0.0, le=600_000.0)
    """Longest one batch forward may take under the chosen budget, for texts of any measured length."""
    text_tokens: list[int] = Field(default_factory=list)
    """Text lengths (tokens) measured; empty: 16, 32, 64, ... up to the model's max length, and it."""
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """Batch sizes measured; the candidates for max_batch_size."""
    seconds: float = Field(default=30.0, ge=0.5, le=3600.0)
    """Time spent measuring after one warm-up pass; longer gives steadier medians."""
    min_repeats: int = Field(default=3, ge=1, le=1000)
    """Least timed forwards per (length, batch size) point, even past `seconds`."""
    mix_text_tokens: list[int] = Field(default_factory=list)
    """Text lengths of the expected traffic, equally likely, to choose for; empty: the measured lengths."""
    concurrency: int = Field(default=64, ge=1, le=100_000)
    """Texts in flight assumed when the queue is simulated to choose the budget."""

    @model_validator(mode="after")
    def _check_grids(self) -> TuningConfig:
        for name, most in (("text_tokens", 1_000_000), ("batch_sizes", 4096), ("mix_text_tokens", 1_000_000)):
            values: list[int] = getattr(self, name)
            bad = [v for v in values if not 1 <= v <= most]
            if bad:
                raise ValueError(f"tuning.{name} must hold values in [1, {most}] (got {bad})")
        if not self.batch_sizes:
            raise ValueError("tuning.batch_sizes must not be empty")
        return self
