"""The generation service's settings (the `generation` section of the configuration)."""

from __future__ import annotations

from pydantic import Field, model_validator

from textserve.core.config import LimitsConfig, ModelConfig, ServerConfig, ServiceConfigBase


class GenerationServiceConfig(ServiceConfigBase):
    """Generation service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50054))
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(path="", backend="torch"))
    """Causal LM directory; an empty path (or `builtin:demo-lm`) serves the packaged demo LM (a
    small GPT-2-shaped model trained on public-domain books, for demos only), and
    `builtin:random` a tiny random model (tests and benchmarks; gibberish)."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    max_new_tokens_default: int = Field(default=64, ge=1, le=1_000_000)
    """max_new_tokens when a request leaves it 0."""
    max_new_tokens_limit: int = Field(default=1024, ge=1, le=1_000_000)
    """Largest max_new_tokens a request may ask for."""
    max_running_sequences: int = Field(default=32, ge=1, le=4096)
    """Most sequences decoded together."""
    max_waiting_sequences: int = Field(default=1024, ge=1, le=1_000_000)
    """Most sequences waiting for admission; more are rejected with RESOURCE_EXHAUSTED."""
    kv_budget_tokens: int = Field(default=65536, ge=16, le=100_000_000)
    """KV cache budget in padded tokens: running sequences x the longest (prompt + max_new_tokens)."""
    max_prefill_tokens: int = Field(default=4096, ge=16, le=10_000_000)
    """Most padded prompt tokens (new sequences x longest prompt) prefilled in one step."""
    stream_interval_tokens: int = Field(default=1, ge=1, le=1024)
    """Tokens per streamed message."""
    max_stop_sequences: int = Field(default=16, ge=0, le=1024)
    """Most stop sequences in one request."""
    max_stop_chars: int = Field(default=256, ge=1, le=100_000)
    """Most characters in one stop sequence."""

    @model_validator(mode="after")
    def _check_limits(self) -> GenerationServiceConfig:
        if self.max_new_tokens_default > self.max_new_tokens_limit:
            raise ValueError(
                f"generation.max_new_tokens_default={self.max_new_tokens_default} exceeds "
                f"generation.max_new_tokens_limit={self.max_new_tokens_limit}"
            )
        return self
