"""Builds the ServiceApps a process runs from the settings (`textserve serve <name>|all`)."""

from __future__ import annotations

from collections.abc import Sequence

from textserve.core.cache import build_cache
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.runtime.token_source import TokenSource
from textserve.settings import Settings
from textserve.transport.server import ServiceApp

GRPC_SERVICES: tuple[str, ...] = ("tokenizer", "embedding", "classifier", "generation")
"""Services that `serve all` starts, in start order."""


def build_app(name: str, settings: Settings) -> ServiceApp:
    """One service's app."""
    if name == "embedding":
        from textserve.embedding.app import EmbeddingApp

        config = settings.embedding
        return EmbeddingApp(
            config,
            build_cache(settings.cache, "embedding") if config.cache_enabled else None,
            _remote_token_source(config),
        )
    if name == "tokenizer":
        from textserve.tokenizer.app import TokenizerApp

        return TokenizerApp(settings.tokenizer)
    if name == "classifier":
        return _classifier_app(settings, None)
    if name == "generation":
        from textserve.generation.app import GenerationApp

        generation = settings.generation
        return GenerationApp(
            generation, build_cache(settings.cache, "generation") if generation.cache_enabled else None
        )
    raise ValueError(f"unknown service {name!r}; choose one of {', '.join(GRPC_SERVICES)} or all")


def _remote_token_source(config: EmbeddingServiceConfig) -> TokenSource | None:
    """A tokenizer-service client when embedding.tokenizer_address is set (else in-process)."""
    if not config.tokenizer_address:
        return None
    from textserve.client.tokens import client_token
    from textserve.runtime.remote_tokens import RemoteTokenSource

    return RemoteTokenSource(
        config.tokenizer_address, config.client, token=client_token(config.server.auth), service="embedding"
    )


def _classifier_app(settings: Settings, embedding: ServiceApp | None) -> ServiceApp:
    """The classifier; with `embedding` (the embedding app of this process) it shares that
    app's model when it needs embeddings and has no embedding_address."""
    from textserve.classifier.app import ClassifierApp
    from textserve.classifier.vector_source import LocalVectorSource
    from textserve.client.tokens import client_token
    from textserve.embedding.app import EmbeddingApp

    classifier = settings.classifier
    source = None
    if (
        isinstance(embedding, EmbeddingApp)
        and not classifier.embedding_address
        and classifier.kind != "sequence_classification"
    ):
        # One copy of the model in memory, one batcher for both services' texts, no gRPC hop
        # (loopback gRPC in one process measured at about half the throughput of in-process
        # vectors: loadtests/bench_classifier.py).
        source = LocalVectorSource(embedding.service, owned=False)
    return ClassifierApp(
        classifier,
        build_cache(settings.cache, "classifier") if classifier.cache_enabled else None,
        source,
        token=client_token(classifier.server.auth),
    )


def build_apps(names: Sequence[str], settings: Settings) -> list[ServiceApp]:
    """Apps for the given service names ("all" expands to every gRPC service)."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(GRPC_SERVICES if name == "all" else [name])
    built = {i: build_app(name, settings) for i, name in enumerate(expanded) if name != "classifier"}
    embedding = next((app for app in built.values() if app.name == "embedding"), None)
    for i, name in enumerate(expanded):
        if name == "classifier":
            built[i] = _classifier_app(settings, embedding)
    return [built[i] for i in range(len(expanded))]
