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
from textserve.core.cache import ResponseCache, make_key
from textserve.core.coalesce import Coalescer, Publish
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts, check_token_ids
from textserve.core.vectors import unit_rows as normalize_rows
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.runtime.encoder import EncoderInfo, EncoderModel, Task
from textserve.runtime.token_source import LocalTokenSource, TokenSource
from textserve.runtime.tokenization import Encoded
from textserve.tuning.result import TuningPoint
from textserve.tuning.startup import publish_tuning, startup_budget

log = logging.getLogger(__name__)

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


_Vector = tuple[np.ndarray, bool]
"""One input's vector and whether it came from the response cache."""


class EmbeddingService:
    """Owns the embedding model, its batcher and its cache use."""

    def __init__(
        self,
        config: EmbeddingServiceConfig,
        cache: ResponseCache | None = None,
        token_source: TokenSource | None = None,
        name: str = SERVICE,
        task: Task = "embedding",
    ) -> None:
        self.config = config
        self.cache = cache if config.cache_enabled else None
        self.name = name
        self.task: Task = task
        """Encoder task; the classifier reuses this service for "sequence-classification" logits."""
        self._token_source = token_source
        self.model: EncoderModel | None = None
        self.batcher: Batcher[list[int], np.ndarray] | None = None
        self.inflight: Coalescer[_Vector] = Coalescer(self.cache.service if self.cache is not None else name)
        self.tuning_curve: list[TuningPoint] = []
        """The measured batching curve behind a tuned budget (empty when the budget is configured)."""

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model off the event loop, then starts the batcher."""
        model = await asyncio.to_thread(EncoderModel, self.config.model, self.task)
        self.model = model
        if self._token_source is None:
            self._token_source = LocalTokenSource(model.tokenizer)
        elif callable(bind := getattr(self._token_source, "bind", None)):
            # A remote token source (runtime/remote_tokens.py) learns the model and its length cut.
            bind(model.info.name, model.tokenizer.max_length)
        labels = {"service": self.name, "model": model.info.name}
        metrics.MODEL_LOAD_DURATION.labels(**labels).set(model.load_seconds)
        tuned = await asyncio.to_thread(
            startup_budget,
            model,
            self.config.tuned_budget_file,
            self.config.autotune,
            self.config.tuning,
            batcher=self.config.batcher,
        )
        self.batcher = Batcher(model.run_batch, self.config.batcher, service=self.name, model=model.info.name)
        if tuned is not None:
            budget = tuned.budget
            self.batcher.set_budget(budget.max_batch_size, budget.max_batch_tokens, budget.source)
            self.tuning_curve = list(tuned.curve)
            publish_tuning(tuned, self.name, model.info.name)
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
        truncate = limits.truncate if params.truncate is None else params.truncate
        field = "texts"
        if params.token_ids:
            if params.texts:
                raise InvalidInput("token_inputs", "set texts or token_inputs, not both")
            field = "token_inputs"
            check_token_ids(params.token_ids, limits.max_texts_per_request, self.model.vocab_size)
            encoded = [self.model.tokenizer.truncate(list(ids)) for ids in params.token_ids]
        else:
            check_texts(params.texts, limits)
            encoded = await self._token_source.encode(params.texts, deadline)
        tokenized = time.perf_counter()
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InvalidInput(
                        f"{field}[{index}]",
                        f"has {item.full_length} tokens; max_tokens_per_text={self._token_source.max_length} "
                        "(set truncation=TRUNCATE to cut it)",
                    )
        info = self.model.info
        result = EmbedResult([], [len(e.ids) for e in encoded], [e.truncated for e in encoded], [])
        keys = [self._key(info, e.ids) for e in encoded]
        use_cache = self.cache is not None and not params.skip_cache

        async def compute(indices: list[int], publish: Publish[_Vector]) -> None:
            await self._compute(indices, encoded, keys, use_cache, deadline, result, publish)

        # Identical inputs in flight are computed once (cache or not); skip_cache asks for a fresh one.
        items = await self.inflight.run(keys, compute, deadline, share=not params.skip_cache)
        result.cached = [from_cache for _, from_cache in items]
        stacked = np.stack([vector for vector, _ in items]).astype(np.float32, copy=False)
        if params.normalize:
            stacked = normalize_rows(stacked)
        result.vectors = list(stacked)
        metrics.INPUT_TOKENS.labels(service=self.name, model=info.name).inc(sum(result.tokens))
        result.tokenize_seconds = tokenized - started
        result.total_seconds = time.perf_counter() - started
        return result

    def _key(self, info: EncoderInfo, ids: Sequence[int]) -> str:
        """Identity of one input's output: model, revision, task, pooling and the exact token ids."""
        parts = (info.name, info.revision, self.task, info.pooling, np.asarray(ids, np.int32).tobytes())
        return self.cache.key(*parts) if self.cache is not None else make_key(f"{self.name}:", *parts)

    async def _compute(
        self,
        indices: list[int],
        encoded: Sequence[Encoded],
        keys: Sequence[str],
        use_cache: bool,
        deadline: float | None,
        result: EmbedResult,
        publish: Publish[_Vector],
    ) -> None:
        """One cache read for `indices`, one model run for the misses, one cache write."""
        assert self.model is not None and self.batcher is not None
        misses = indices
        if use_cache and self.cache is not None:
            dimensions = self.model.info.dimensions
            values = await self.cache.get_decoded(
                [keys[i] for i in indices], lambda value: _decode_vector(value, dimensions)
            )
            misses = []
            for index, vector in zip(indices, values, strict=True):
                if vector is None:
                    misses.append(index)
                else:
                    publish(index, (vector, True))
        if not misses:
            return
        outputs = await self.batcher.run(
            [encoded[i].ids for i in misses], [len(encoded[i].ids) for i in misses], deadline
        )
        for index, output in zip(misses, outputs, strict=True):
            publish(index, (output.value, False))
        result.queue_seconds = max(o.queue_seconds for o in outputs)
        result.inference_seconds = max(o.inference_seconds for o in outputs)
        result.batch_sizes = [o.batch_size for o in outputs]
        if use_cache and self.cache is not None:
            packed = [np.asarray(o.value, dtype="<f4").tobytes() for o in outputs]
            self.cache.put_many([(keys[i], value) for i, value in zip(misses, packed, strict=True)])


def _decode_vector(value: bytes | None, dimensions: int) -> np.ndarray | None:
    """A cached packed little-endian float32 vector, or None when absent or corrupt."""
    if value is None or len(value) != dimensions * 4:
        return None
    vector = np.frombuffer(value, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None
    return vector
