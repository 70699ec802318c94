"""Builds the ServiceApps a process runs from the settings (`textserve serve <name>|all`)."""

from __future__ import annotations

from collections.abc import Sequence

from textserve.core.cache import build_cache
from textserve.core.config import Settings
from textserve.core.server import ServiceApp

GRPC_SERVICES: tuple[str, ...] = ("embedding",)
"""Services that `serve all` starts, in start order."""


def build_app(name: str, settings: Settings) -> ServiceApp:
    """One service's app."""
    if name == "embedding":
        from textserve.embedding.app import EmbeddingApp

        config = settings.embedding
        return EmbeddingApp(config, build_cache(settings.cache, "embedding") if config.cache_enabled else None)
    raise ValueError(f"unknown service {name!r}; choose one of {', '.join(GRPC_SERVICES)} or all")


def build_apps(names: Sequence[str], settings: Settings) -> list[ServiceApp]:
    """Apps for the given service names ("all" expands to every gRPC service)."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(GRPC_SERVICES if name == "all" else [name])
    return [build_app(name, settings) for name in expanded]
