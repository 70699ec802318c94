"""The tokenizer service's settings (the `tokenizer` section of the configuration)."""

from __future__ import annotations

from pydantic import Field

from textserve.core.config import LimitsConfig, ModelConfig, ServerConfig, ServiceConfigBase


class TokenizerServiceConfig(ServiceConfigBase):
    """Tokenizer service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50051))
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    """Models whose tokenizers are served; the first is the default."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    cache_enabled: bool = False
