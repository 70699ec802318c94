"""Builds the ServiceApps a process runs from the settings (`textserve serve <name>|all`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from textserve.core.cache import build_cache
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.runtime.token_source import TokenSource
from textserve.settings import Settings
from textserve.transport.server import ServiceApp

if TYPE_CHECKING:
    from textserve.runtime.encoder_engine import Encoder

GRPC_SERVICES: tuple[str, ...] = ("tokenizer", "embedding", "classifier", "generation")
"""Services that `serve all` starts, in start order."""


def build_app(name: str, settings: Settings) -> ServiceApp:
    """One service's app."""
    if name == "embedding":
        if settings.embedding.repository.path is not None:
            from textserve.embedding.app import EmbeddingApp

            config = settings.embedding
            cache = build_cache(settings.cache, "embedding") if config.cache_enabled else None
            return EmbeddingApp(config, cache, cache_config=settings.cache)
        return _embedding_app(settings, _embedding_encoder(settings))
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


def _embedding_encoder(settings: Settings) -> Encoder:
    """The embedding model's Encoder: its response cache and token source."""
    from textserve.embedding.service import build_encoder

    config = settings.embedding
    return build_encoder(
        config,
        build_cache(settings.cache, "embedding") if config.cache_enabled else None,
        _remote_token_source(config),
    )


def _embedding_app(settings: Settings, encoder: Encoder) -> ServiceApp:
    """The embedding app over `encoder`, which it starts and stops."""
    from textserve.embedding.app import EmbeddingApp

    return EmbeddingApp(settings.embedding, encoder=encoder, cache_config=settings.cache)


def _remote_token_source(config: EmbeddingServiceConfig) -> TokenSource | None:
    """A tokenizer-service client when embedding.tokenizer_address is set (else in-process)."""
    if not config.tokenizer_address:
        return None
    from textserve.client.tokens import client_token
    from textserve.runtime.remote_tokens import RemoteTokenSource

    return RemoteTokenSource(
        config.tokenizer_address, config.client, token=client_token(config.server.auth), service="embedding"
    )


def _classifier_app(settings: Settings, embedding: Encoder | None) -> ServiceApp:
    """The classifier; with `embedding` (the embedding app's Encoder in this process) it
    shares that model when it needs embeddings and has no embedding_address."""
    from textserve.classifier.app import ClassifierApp
    from textserve.client.tokens import client_token

    classifier = settings.classifier
    shared = (
        embedding
        if not classifier.embedding_address
        and classifier.kind not in ("sequence_classification", "token_classification")
        and classifier.repository.path is None
        else None
    )
    # One copy of the model in memory, one batcher for both services' texts, no gRPC hop
    # (loopback gRPC in one process measured at about half the throughput of in-process
    # vectors: loadtests/bench_classifier.py).
    return ClassifierApp(
        classifier,
        build_cache(settings.cache, "classifier") if classifier.cache_enabled else None,
        token=client_token(classifier.server.auth),
        encoder=shared,
        cache_config=settings.cache,
    )


def build_apps(names: Sequence[str], settings: Settings) -> list[ServiceApp]:
    """Apps for the given service names ("all" expands to every gRPC service); the embedding
    app's Encoder is shared with the classifier when both run here."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(GRPC_SERVICES if name == "all" else [name])
    # With a model repository the embedding versions come and go: nothing is shared then.
    shares = settings.embedding.repository.path is None
    encoder = _embedding_encoder(settings) if "embedding" in expanded and shares else None
    built: list[ServiceApp] = []
    for name in expanded:
        if name == "embedding" and encoder is not None:
            built.append(_embedding_app(settings, encoder))
        elif name == "embedding":
            built.append(build_app(name, settings))
        elif name == "classifier":
            built.append(_classifier_app(settings, encoder))
        else:
            built.append(build_app(name, settings))
    return built
