"""Embedding logic: validate, apply the truncation policy, embed with the Encoder, normalize.

The Encoder (runtime/encoder_engine.py) tokenizes, batches, runs the model and goes
through the response cache; this module owns the request rules around it and the result.
Knows nothing of protobuf; the servicer converts in and out (embedding/convert.py).

Model quality (quality/recorder.py): each vector's norm before normalisation and each
input's token count become prediction statistics; with drift detection on, the unit
vectors go to the drift window (unit whatever the request's `normalize`, as references
are). The norms are computed once and reused by the normalisation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from textserve.core.batcher import BatchBudget
from textserve.core.cache import ResponseCache
from textserve.core.config import CacheConfig
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts, check_token_ids
from textserve.core.vectors import unit_rows
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.quality.recorder import QualityRecorder
from textserve.runtime.encoder import EncoderInfo
from textserve.runtime.encoder_engine import Encoder, EncoderOptions, reject_truncated
from textserve.runtime.token_source import TokenSource
from textserve.tuning.result import TuningPoint

SERVICE = "embedding"


@dataclass(frozen=True)
class EmbedParams:
    """One Embed call, as the logic sees it."""

    texts: Sequence[str]
    token_ids: Sequence[Sequence[int]] = ()
    """Pre-tokenized inputs, used as given (alternative to texts)."""
    normalize: bool = False
    truncate: bool | None = None
    skip_cache: bool = False


@dataclass
class EmbedResult:
    """Vectors with per-text accounting and where time went."""

    vectors: list[np.ndarray]
    tokens: list[int]
    truncated: list[bool]
    cached: list[bool]
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    total_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def build_encoder(
    config: EmbeddingServiceConfig,
    cache: ResponseCache | None = None,
    token_source: TokenSource | None = None,
) -> Encoder:
    """The embedding model's Encoder (its response cache only when cache_enabled)."""
    options = EncoderOptions(
        model=config.model,
        batcher=config.batcher,
        tuning=config.tuning,
        tuned_budget_file=config.tuned_budget_file,
        autotune=config.autotune,
    )
    return Encoder(options, cache if config.cache_enabled else None, token_source, service=SERVICE)


class EmbeddingService:
    """The embedding request logic around an Encoder, which it starts and stops."""

    def __init__(
        self,
        config: EmbeddingServiceConfig,
        cache: ResponseCache | None = None,
        token_source: TokenSource | None = None,
        *,
        encoder: Encoder | None = None,
        cache_config: CacheConfig | None = None,
    ) -> None:
        self.config = config
        self.name = SERVICE
        self.encoder = encoder if encoder is not None else build_encoder(config, cache, token_source)
        self.quality = QualityRecorder(config.quality, service=SERVICE, cache=cache_config)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model and starts its batcher."""
        await self.quality.start()
        await self.encoder.start()

    async def stop(self) -> None:
        """Stops the batcher and closes the cache and tokenizer connections, then the quality parts."""
        await self.encoder.stop()
        await self.quality.close()

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self.encoder.ready

    @property
    def info(self) -> EncoderInfo:
        """Model description; NotReady before the model is loaded."""
        return self.encoder.info

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache of the vectors (None when off)."""
        return self.encoder.cache

    @property
    def budget(self) -> BatchBudget:
        """The batch budget in use; NotReady before the model is loaded."""
        return self.encoder.budget

    @property
    def tuning_curve(self) -> list[TuningPoint]:
        """The measured batching curve behind a tuned budget (empty when the budget is configured)."""
        return self.encoder.tuning_curve

    # --- the request path ----------------------------------------------------------------
    async def embed(self, params: EmbedParams, deadline: float | None = None) -> EmbedResult:
        """Embeds texts; raises InvalidInput, Overloaded, DeadlineExceeded or NotReady."""
        started = time.perf_counter()
        encoder = self.encoder
        if not encoder.ready:
            raise NotReady("model is still loading")
        limits = self.config.limits
        truncate = limits.truncate if params.truncate is None else params.truncate
        field = "texts"
        if params.token_ids:
            if params.texts:
                raise InvalidInput("token_inputs", "set texts or token_inputs, not both")
            field = "token_inputs"
            check_token_ids(params.token_ids, limits.max_texts_per_request, encoder.vocab_size)
            encoded = [encoder.cut(ids) for ids in params.token_ids]
        else:
            check_texts(params.texts, limits)
            encoded = await encoder.tokenize(params.texts, deadline)
        tokenized = time.perf_counter()
        if not truncate:
            reject_truncated(encoded, field, encoder.max_length)
        # Identical inputs in flight are computed once (cache or not); skip_cache asks for a fresh one.
        output = await encoder.embed(encoded, deadline, skip_cache=params.skip_cache)
        stacked = np.stack(output.rows).astype(np.float32, copy=False)
        norms = np.linalg.norm(stacked, axis=-1)
        tokens = [len(e.ids) for e in encoded]
        quality = self.quality
        unit = None
        if params.normalize or quality.wants_vectors:
            unit = unit_rows(stacked, norms)
        info = encoder.info
        quality.embedded(info.name, info.revision, norms, tokens, unit)
        if params.normalize:
            assert unit is not None
            stacked = unit
        return EmbedResult(
            vectors=list(stacked),
            tokens=tokens,
            truncated=[e.truncated for e in encoded],
            cached=output.cached,
            tokenize_seconds=tokenized - started,
            queue_seconds=output.queue_seconds,
            inference_seconds=output.inference_seconds,
            total_seconds=time.perf_counter() - started,
            batch_sizes=output.batch_sizes,
        )
