"""Embedding logic: validate, apply the truncation policy, embed with the Encoder, normalize.

The Encoder (runtime/encoder_engine.py) tokenizes, batches, runs the model and goes
through the response cache; this module owns the request rules around it and the result.
Knows nothing of protobuf; the servicer converts in and out (embedding/convert.py).

Model quality (quality/recorder.py): each vector's norm before normalisation and each
input's token count become prediction statistics; with drift detection on, the unit
vectors go to the drift window (unit whatever the request's `normalize`, as references
are). The norms are computed once and reused by the normalisation.

Model versions (lifecycle/): the service holds a VersionManager of Encoders, one per version
(one, "1", without a model repository). Each request is routed (a pinned version, else the
weighted split sticky per routing key) and its result says which version served it; with a
shadow version, a share of requests is run again on it after the primary answered and the
mean cosine of the two sets of vectors is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textserve.core.batcher import BatchBudget
from textserve.core.cache import ResponseCache
from textserve.core.config import CacheConfig
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts, check_token_ids
from textserve.core.vectors import unit_rows
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.lifecycle.gate import ForwardGate
from textserve.lifecycle.manager import VersionManager, error_code_name
from textserve.quality.recorder import QualityRecorder
from textserve.runtime.encoder import EncoderInfo
from textserve.runtime.encoder_engine import Encoder, EncoderOptions, reject_truncated
from textserve.runtime.model_files import model_name
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
    model_version: str = ""
    """Version to serve this request; empty: the traffic split decides."""
    routing_key: str = ""
    """Requests with the same key reach the same version while the weights stand."""


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
    version: str = ""
    """The model version that served the request."""
    info: EncoderInfo | None = None
    """That version's model description."""


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


def configured_model_name(config: EmbeddingServiceConfig) -> str:
    """The model's name: model.name, else the folder name of model.path."""
    return config.model.name or model_name(config.model.path)


def version_encoder(
    config: EmbeddingServiceConfig,
    cache: ResponseCache | None,
    version: str,
    folder: Path,
    gate: ForwardGate | None = None,
    background: Callable[[], bool] = lambda: False,
) -> Encoder:
    """The Encoder of one repository version: the folder's model under the service's model name,
    the service's batcher, the shared response cache (keys carry the version; not closed by it),
    the forward gate of the versions (shadow batches after the primary's)."""
    model = config.model.model_copy(update={"path": str(folder), "name": configured_model_name(config)})
    options = EncoderOptions(model=model, batcher=config.batcher, tuning=config.tuning)
    return Encoder(
        options,
        cache if config.cache_enabled else None,
        None,
        service=SERVICE,
        version=version,
        close_cache=False,
        gate=gate,
        background=background,
    )


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
        """`encoder` (or one built from `cache` and `token_source`) serves version "1" without a
        model repository; with one, each version gets its own Encoder over the shared `cache`."""
        self.config = config
        self.name = SERVICE
        self._cache = cache if config.cache_enabled else None
        repository = config.repository
        default = None
        if repository.path is None:
            default = encoder if encoder is not None else build_encoder(config, cache, token_source)

        gate = ForwardGate(config.batcher.workers)

        def build(version: str, folder: Path | None) -> Encoder:
            if folder is None:
                assert default is not None
                return default
            return version_encoder(
                config, cache, version, folder, gate, lambda: self.versions.routing.shadow_version == version
            )

        if default is not None:
            # The service closes the cache at its stop: an unload of version "1" must leave it
            # open for the same Encoder loaded again.
            default.close_cache = False
        self._default = default
        self.versions: VersionManager[Encoder] = VersionManager(
            SERVICE, configured_model_name(config), repository, build, code_of=error_code_name
        )
        self.quality = QualityRecorder(config.quality, service=SERVICE, cache=cache_config)

    def set_code_names(self, code_of: Callable[[BaseException | None], str]) -> None:
        """How the per-version request counter names an outcome (the app passes gRPC status names)."""
        self.versions.code_of = code_of

    @property
    def encoder(self) -> Encoder:
        """The Encoder of the primary version (the one Info describes); NotReady when none is ready.
        Without a repository, the one Encoder (loaded or not)."""
        if self._default is not None:
            return self._default
        runtime = self.versions.primary().runtime
        if runtime is None:
            raise NotReady("model is still loading")
        return runtime

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model version(s) and starts their batchers."""
        await self.quality.start()
        await self.versions.start()

    async def stop(self) -> None:
        """Stops the batchers and closes the cache and tokenizer connections, then the quality parts."""
        await self.versions.stop()
        cache = self._cache if self._default is None else self._default.cache
        if cache is not None:
            await cache.close()  # shared by the versions (and by one version's loads), which do not close it
        await self.quality.close()

    @property
    def ready(self) -> bool:
        """True once a model version is loaded."""
        return self.versions.ready

    @property
    def info(self) -> EncoderInfo:
        """Model description; NotReady before the model is loaded."""
        return self.encoder.info

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache of the vectors (None when off)."""
        if self.config.repository.path is not None:
            return self._cache
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
        """Embeds texts with the routed version; raises InvalidInput, Overloaded, DeadlineExceeded,
        NotReady or NotFound (an unknown pinned version)."""
        started = time.perf_counter()
        if not self.versions.ready:
            raise NotReady("model is still loading")
        async with self.versions.route(params.model_version, params.routing_key) as slot:
            encoder = slot.runtime
            if encoder is None or not encoder.ready:
                raise NotReady(f"model version {slot.version} is not loaded")
            result = await self._embed(encoder, params, deadline, started)
        result.version = slot.version
        self.versions.mirror(slot.version, lambda shadow, until: self._shadow(shadow, params, result, until))
        return result

    async def _shadow(
        self, encoder: Encoder, params: EmbedParams, primary: EmbedResult, deadline: float
    ) -> float:
        """The same request on the shadow version (no quality records): the mean cosine of its
        vectors with the primary's, the agreement the shadow metric records."""
        if params.token_ids:
            encoded = [encoder.cut(ids) for ids in params.token_ids]
        else:
            encoded = await encoder.tokenize(params.texts, deadline)
        output = await encoder.embed(encoded, deadline, skip_cache=params.skip_cache)
        return mean_cosine(np.stack(primary.vectors), np.stack(output.rows))

    async def _embed(
        self, encoder: Encoder, params: EmbedParams, deadline: float | None, started: float
    ) -> EmbedResult:
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
            info=info,
        )


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine between row i of `a` and row i of `b` (0 for a zero row),
    clipped to [0, 1]."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    norms = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    dots = np.sum(a64 * b64, axis=-1)
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return float(np.clip(cosines.mean(), 0.0, 1.0)) if len(cosines) else 1.0
