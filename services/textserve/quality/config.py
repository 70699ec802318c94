"""Configuration of model-quality monitoring: drift detection, feedback join, payload log.

Sub-configs in the house style (typed, bounded, one docstring per field). Everything is off
by default; a service composes `QualityConfig` as its `quality` section
(`TEXTSERVE_QUALITY__DRIFT__ENABLED=true` once composed under the `TEXTSERVE_` settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DriftConfig(_Section):
    """Drift detectors over a sliding window of recent inputs, against a reference sample."""

    enabled: bool = False
    """Keep windows and run the detectors (off: nothing is kept, nothing is computed)."""
    embedding_detector: Literal["mmd", "projection_ks"] = "mmd"
    """Test for embeddings: MMD with a permutation test, or Bonferroni-corrected KS on projections."""
    window_size: int = Field(200, ge=10, le=100_000)
    """Most recent inputs per (model, version) kept and tested (the window is tested once full)."""
    test_every_n: int = Field(200, ge=1)
    """Run the tests after this many new inputs since the last run..."""
    test_every_s: float = Field(60.0, ge=0.0)
    """...or once this many seconds have passed since the last run with new inputs (0: count only)."""
    significance: float = Field(0.05, gt=0.0, lt=1.0)
    """A test flags drift when its p-value is below this."""
    n_permutations: int = Field(200, ge=19, le=10_000)
    """Random splits of the MMD permutation test (p-value resolution 1 / (n + 1))."""
    n_projections: int = Field(32, ge=1, le=1024)
    """Random projections of the projection_ks test."""
    max_reference: int = Field(500, ge=10, le=100_000)
    """Reference vectors kept for MMD (a seeded random subset of a larger reference)."""
    reference_file: Path | None = None
    """Reference sample (.npz from `quality.reference.save_reference`) for every model version."""
    capture_reference: int = Field(0, ge=0, le=100_000)
    """With no reference file: the first N inputs after a version starts become its reference (0: off)."""
    seed: int = 0
    """Seed of the permutations, projections and reference subsampling."""

    @model_validator(mode="after")
    def _reference_fits_window(self) -> DriftConfig:
        if 0 < self.capture_reference < 2:
            raise ValueError(f"capture_reference ({self.capture_reference}) must be 0 or >= 2")
        return self


class FeedbackConfig(_Section):
    """Predictions kept for joining ground truth, and the live-accuracy window."""

    enabled: bool = False
    """Keep predictions (labels only, never texts) and accept feedback."""
    backend: Literal["auto", "memory", "redis"] = "auto"
    """memory: one replica's LRU; redis: shared by every replica (the cache's Redis connection
    settings); auto: redis when the response cache's backend is redis, else memory."""
    max_predictions: int = Field(100_000, ge=1, le=100_000_000)
    """Most predictions kept; the oldest are dropped first."""
    ttl_s: int = Field(86_400, ge=1)
    """Seconds a prediction can be joined with its feedback."""
    window_size: int = Field(1000, ge=1, le=1_000_000)
    """Joined (truth, prediction) pairs per (model, version) behind live accuracy and recall."""
    key_prefix: str = "textserve:feedback:"
    """Prefix of the Redis keys (redis backend)."""


class PayloadLogConfig(_Section):
    """Opt-in log of sampled requests with their predictions and feedback, for retraining.

    The texts it writes are personal data: enable it only where their storage is allowed,
    and bound it (max_bytes / backups for files, stream_maxlen / ttl_s for Redis).
    """

    enabled: bool = False
    """Write sampled payloads (off: no text is ever written anywhere)."""
    sink: Literal["jsonl", "redis"] = "jsonl"
    """jsonl: a rotated local file; redis: a capped Redis stream."""
    sample_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Fraction of requests logged (chosen by request id, so feedback follows its request)."""
    path: Path = Path("payloads.jsonl")
    """JSONL file (jsonl sink); rotated to path.1 ... path.<backups>."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Size at which the JSONL file is rotated."""
    backups: int = Field(3, ge=0, le=100)
    """Rotated files kept (0: the file is truncated when full)."""
    stream_key: str = "textserve:payloads"
    """Redis stream key (redis sink)."""
    stream_maxlen: int = Field(100_000, ge=1)
    """Approximate most entries kept in the stream (XADD MAXLEN ~)."""
    ttl_s: int = Field(7 * 86_400, ge=1)
    """Seconds the stream lives after its last write (redis sink)."""


class QualityConfig(_Section):
    """Model-quality monitoring of one service."""

    drift: DriftConfig = DriftConfig()
    """Drift detectors."""
    feedback: FeedbackConfig = FeedbackConfig()
    """Feedback join and live accuracy."""
    payload_log: PayloadLogConfig = PayloadLogConfig()
    """Opt-in payload log."""
    max_pending_writes: int = Field(1024, ge=1, le=1_000_000)
    """Background writes in flight (predictions kept for feedback, payload-log records); more are
    dropped and counted (textserve_quality_writes_dropped_total), never waited for by a request."""
