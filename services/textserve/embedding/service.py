"""Embedding logic: validate, tokenize, cache lookup, batch, pool, normalize, cache write.

Knows nothing of protobuf; the servicer converts in and out (embedding/convert.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from textserve.core import metrics
from textserve.core.batcher import Batcher
from textserve.core.cache import ResponseCache
from textserve.core.config import EmbeddingServiceConfig
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts
from textserve.runtime.encoder import EncoderInfo, EncoderModel
from textserve.runtime.token_source import LocalTokenSource, TokenSource

log = logging.getLogger(__name__)

SERVICE = "embedding"


@dataclass(frozen=True)
class EmbedParams:
    """One Embed call, as the logic sees it."""

    texts: Sequence[str]
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


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbeddingService:
    """Owns the embedding model, its batcher and its cache use."""

    def __init__(
        self,
        config: EmbeddingServiceConfig,
        cache: ResponseCache | None = None,
        token_source: TokenSource | None = None,
        name: str = SERVICE,
    ) -> None:
        self.config = config
        self.cache = cache if config.cache_enabled else None
        self.name = name
        self._token_source = token_source
        self.model: EncoderModel | None = None
        self.batcher: Batcher[list[int], np.ndarray] | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model off the event loop, then starts the batcher."""
        model = await asyncio.to_thread(EncoderModel, self.config.model, "embedding")
        self.model = model
        if self._token_source is None:
            self._token_source = LocalTokenSource(model.tokenizer)
        labels = {"service": self.name, "model": model.info.name}
        metrics.MODEL_LOAD_DURATION.labels(**labels).set(model.load_seconds)
        self.batcher = Batcher(model.run_batch, self.config.batcher, service=self.name, model=model.info.name)
        await self.batcher.start()
        metrics.MODEL_LOADED.labels(**labels).set(1)
        log.info(
            "model loaded",
            extra={
                "service": self.name,
                "model": model.info.name,
                "backend": model.info.backend,
                "device": model.info.device,
                "seconds": round(model.load_seconds, 3),
            },
        )

    async def stop(self) -> None:
        """Stops the batcher and closes the cache and tokenizer connections."""
        if self.batcher is not None:
            await self.batcher.stop()
        if self.model is not None:
            metrics.MODEL_LOADED.labels(service=self.name, model=self.model.info.name).set(0)
        if self._token_source is not None:
            await self._token_source.close()
        if self.cache is not None:
            await self.cache.close()

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self.model is not None and self.batcher is not None

    @property
    def info(self) -> EncoderInfo:
        """Model description; NotReady before the model is loaded."""
        if self.model is None:
            raise NotReady("model is still loading")
        return self.model.info

    # --- the request path ----------------------------------------------------------------
    async def embed(self, params: EmbedParams, deadline: float | None = None) -> EmbedResult:
        """Embeds texts; raises InvalidInput, Overloaded, DeadlineExceeded or NotReady."""
        started = time.perf_counter()
        if self.model is None or self.batcher is None or self._token_source is None:
            raise NotReady("model is still loading")
        limits = self.config.limits
        check_texts(params.texts, limits)
        truncate = limits.truncate if params.truncate is None else params.truncate
        encoded = await self._token_source.encode(params.texts, deadline)
        tokenized = time.perf_counter()
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InvalidInput(
                        f"texts[{index}]",
                        f"has {item.full_length} tokens; max_tokens_per_text={self._token_source.max_length} "
                        "(set truncation=TRUNCATE to cut it)",
                    )
        info = self.model.info
        count = len(encoded)
        vectors: list[np.ndarray | None] = [None] * count
        cached = [False] * count
        keys: list[str] = []
        use_cache = self.cache is not None and not params.skip_cache
        if use_cache:
            assert self.cache is not None
            keys = [
                self.cache.key(info.name, info.revision, "embed", info.pooling, np.asarray(e.ids, np.int32).tobytes())
                for e in encoded
            ]
            for index, value in enumerate(await self.cache.get_many(keys)):
                vector = _decode_vector(value, info.dimensions)
                if vector is not None:
                    vectors[index] = vector
                    cached[index] = True
        misses = [index for index in range(count) if vectors[index] is None]
        result = EmbedResult([], [len(e.ids) for e in encoded], [e.truncated for e in encoded], cached)
        if misses:
            outputs = await self.batcher.run(
                [encoded[i].ids for i in misses], [len(encoded[i].ids) for i in misses], deadline
            )
            for index, output in zip(misses, outputs, strict=True):
                vectors[index] = output.value
            result.queue_seconds = max(o.queue_seconds for o in outputs)
            result.inference_seconds = max(o.inference_seconds for o in outputs)
            result.batch_sizes = [o.batch_size for o in outputs]
            if use_cache:
                assert self.cache is not None
                self.cache.put_many(
                    [(keys[i], np.asarray(vectors[i], dtype="<f4").tobytes()) for i in misses]
                )
        stacked = np.stack([v for v in vectors if v is not None]).astype(np.float32, copy=False)
        if params.normalize:
            stacked = normalize_rows(stacked)
        result.vectors = list(stacked)
        metrics.INPUT_TOKENS.labels(service=self.name, model=info.name).inc(sum(result.tokens))
        result.tokenize_seconds = tokenized - started
        result.total_seconds = time.perf_counter() - started
        return result


def _decode_vector(value: bytes | None, dimensions: int) -> np.ndarray | None:
    """A cached packed little-endian float32 vector, or None when absent or corrupt."""
    if value is None or len(value) != dimensions * 4:
        return None
    vector = np.frombuffer(value, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None
    return vector
