"""The whole configuration: every service's settings composed into `Settings`, loaded and shown.

Each service owns its section (`<service>/config.py`); the shared sections and the loading
machinery (YAML file + TEXTSERVE_* environment, one ConfigError listing every problem)
are in `textserve.core.config`. `load_settings` builds and validates `Settings`;
`dump_settings` gives it as plain data with secrets masked (for logs and `textserve config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import (
    CacheConfig,
    LogConfig,
    MetricsConfig,
    RootConfig,
    load_config,
    mask_url_password,
)
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.gateway.config import GatewayConfig
from textserve.generation.config import GenerationServiceConfig
from textserve.tokenizer.config import TokenizerServiceConfig

ServiceName = Literal["tokenizer", "embedding", "classifier", "generation", "gateway"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("tokenizer", "embedding", "classifier", "generation", "gateway")


class Settings(RootConfig):
    """Every service's configuration; a process serves one service or all of them."""

    log: LogConfig = Field(default_factory=LogConfig)
    """Logging."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus endpoint."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """Response cache."""
    tokenizer: TokenizerServiceConfig = Field(default_factory=TokenizerServiceConfig)
    """Tokenizer service."""
    embedding: EmbeddingServiceConfig = Field(default_factory=EmbeddingServiceConfig)
    """Embedding service."""
    classifier: ClassifierServiceConfig = Field(default_factory=ClassifierServiceConfig)
    """Classifier service."""
    generation: GenerationServiceConfig = Field(default_factory=GenerationServiceConfig)
    """Generation service."""
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    """HTTP gateway."""


def load_settings(
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Builds and validates the settings: defaults < YAML file < environment < overrides.

    Raises ConfigError with every problem listed when anything is invalid.
    """
    return load_config(Settings, config_file, environ, overrides)


def dump_settings(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets masked (for logs and `textserve config`)."""
    data = settings.model_dump(mode="json")
    data["cache"]["url"] = mask_url_password(data["cache"]["url"])
    return data
