"""The encoder engine: one object that tokenizes, batches and runs an encoder model.

`Encoder` owns the EncoderModel (tokenizer + backend, runtime/encoder.py), the token
source (in-process or the tokenizer service), the Batcher with its start-up batch budget
(tuning/startup.py), and the cache-through path of its outputs (core/cache_through.py:
identical inputs in flight computed once, response-cache read and write). Its task verbs
follow the model's task, as in TEI's backend contract: `embed` gives pooled vectors of an
"embedding" model, `predict` gives the logits of a "sequence-classification" model,
`token_logits` gives the per-token logits of a "token-classification" model (with
`windower`: the text windows and code-point offsets they are computed on).

Services put their request logic around it (validation, truncation policy, normalizing,
result assembly); `textserve serve all` shares one instance between the embedding and
classifier apps. Knows nothing of protobuf or of any service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textserve.core import metrics
from textserve.core.batcher import BatchBudget, Batcher
from textserve.core.cache import ResponseCache
from textserve.core.cache_through import CacheThrough
from textserve.core.config import BatcherConfig, ModelConfig
from textserve.core.errors import BackendFailure, InvalidInput, NotReady
from textserve.lifecycle.gate import ForwardGate
from textserve.runtime.encoder import EncoderInfo, EncoderModel, Task, preflight
from textserve.runtime.token_classification import TokenWindower
from textserve.runtime.token_source import LocalTokenSource, TokenSource
from textserve.runtime.tokenization import Encoded
from textserve.tuning.config import TuningConfig
from textserve.tuning.result import TuningPoint
from textserve.tuning.startup import publish_tuning, startup_budget

log = logging.getLogger(__name__)

_LOADING = threading.Lock()
"""One model load at a time per process: model versions and services loading at once would
race in transformers' lazy imports (and only share the same cores)."""


def _load_model(config: ModelConfig, task: Task) -> EncoderModel:
    with _LOADING:
        return EncoderModel(config, task)


@dataclass(frozen=True)
class EncoderOptions:
    """What an Encoder is built from: the owning service's model, batcher and budget settings."""

    model: ModelConfig
    batcher: BatcherConfig
    tuning: TuningConfig
    tuned_budget_file: Path | None = None
    autotune: bool = False


@dataclass
class EncoderOutput:
    """One row per input (a pooled vector or a row of logits) and where time went."""

    rows: list[np.ndarray]
    cached: list[bool]
    """Whether each row came from the response cache."""
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def reject_truncated(encoded: Sequence[Encoded], field: str, max_length: int) -> None:
    """The reject policy: InvalidInput naming the first input that had to be cut."""
    for index, item in enumerate(encoded):
        if item.truncated:
            raise InvalidInput(
                f"{field}[{index}]",
                f"has {item.full_length} tokens; max_tokens_per_text={max_length} "
                "(set truncation=TRUNCATE to cut it)",
            )


class _RowCodec:
    """A cached row: packed little-endian float32 of a known width (else a miss)."""

    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, value: np.ndarray) -> bytes:
        return np.asarray(value, dtype="<f4").tobytes()

    def decode(self, entry: bytes) -> np.ndarray | None:
        if len(entry) != self.width * 4:
            return None
        row = np.frombuffer(entry, dtype="<f4").astype(np.float32)
        return row if np.all(np.isfinite(row)) else None


class _TokenRowsCodec:
    """A cached [tokens, labels] array: packed little-endian float32, `width` labels a row."""

    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, value: np.ndarray) -> bytes:
        return np.asarray(value, dtype="<f4").tobytes()

    def decode(self, entry: bytes) -> np.ndarray | None:
        if not entry or len(entry) % (self.width * 4):
            return None
        rows = np.frombuffer(entry, dtype="<f4").astype(np.float32).reshape(-1, self.width)
        return rows if np.all(np.isfinite(rows)) else None


class Encoder:
    """An encoder model behind a batcher, with task verbs; see the module docstring."""

    def __init__(
        self,
        options: EncoderOptions,
        cache: ResponseCache | None = None,
        token_source: TokenSource | None = None,
        *,
        service: str,
        task: Task = "embedding",
        version: str = "1",
        close_cache: bool = True,
        gate: ForwardGate | None = None,
        background: Callable[[], bool] = lambda: False,
    ) -> None:
        """`version`: the model version this encoder serves (lifecycle/: part of its cache keys);
        `close_cache`: stop() closes the response cache (False when versions share it); `gate`:
        the forward gate the versions of its model share, `background()` true while this
        version's batches are shadow work (they wait for the primary's)."""
        if options.model.precision != "fp32":
            preflight(options.model, task)  # a gated precision fails the build, not a later load
        self.options = options
        self.service = service
        """The metrics' `service` label (the app that owns this encoder)."""
        self.task: Task = task
        self.version = version
        self.close_cache = close_cache
        """stop() closes the response cache (an owner that outlives its versions turns it off)."""
        self._gate = gate
        self._background = background
        self._token_source = token_source
        self._local_tokens = token_source is None
        """The token source is made from the loaded model's tokenizer (again at each start)."""
        self.model: EncoderModel | None = None
        self.batcher: Batcher[list[int], np.ndarray] | None = None
        self.outputs: CacheThrough[np.ndarray] = CacheThrough(cache, service)
        self._windower: TokenWindower | None = None
        self._keys: tuple[EncoderInfo, Callable[[bytes], str]] | None = None
        """The loaded model's info and the key maker of its outputs (fixed parts hashed once)."""
        self.tuning_curve: list[TuningPoint] = []
        """The measured batching curve behind a tuned budget (empty when the budget is configured)."""

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the model off the event loop, applies the start-up budget, starts the batcher."""
        options = self.options
        model = await asyncio.to_thread(_load_model, options.model, self.task)
        self.model = model
        if self._token_source is None:
            self._token_source = LocalTokenSource(model.tokenizer)
        else:
            # A remote token source (runtime/remote_tokens.py) learns the model and its length cut.
            self._token_source.bind(model.info.name, model.tokenizer.max_length)
        labels = {"service": self.service, "model": model.info.name, "version": self.version}
        metrics.MODEL_LOAD_DURATION.labels(**labels).set(model.load_seconds)
        tuned = await asyncio.to_thread(
            startup_budget,
            model,
            options.tuned_budget_file,
            options.autotune,
            options.tuning,
            batcher=options.batcher,
        )
        run_batch = (
            model.run_batch if self._gate is None else self._gate.wrap(model.run_batch, self._background)
        )
        batcher = Batcher(
            run_batch,
            options.batcher,
            service=self.service,
            model=model.info.name,
            version=self.version,
        )
        if tuned is not None:
            budget = tuned.budget
            batcher.set_budget(budget.max_batch_size, budget.max_batch_tokens, budget.source)
            self.tuning_curve = list(tuned.curve)
            publish_tuning(tuned, self.service, model.info.name, self.version)
        self.batcher = batcher
        await batcher.start()
        metrics.MODEL_LOADED.labels(**labels).set(1)
        metrics.MODEL_PRECISION.labels(**labels, precision=model.info.precision).set(1)
        log.info(
            "model loaded",
            extra={
                "service": self.service,
                "model": model.info.name,
                "backend": model.info.backend,
                "device": model.info.device,
                "precision": model.info.precision,
                "precision_reason": model.plan.reason,
                "seconds": round(model.load_seconds, 3),
            },
        )

    async def stop(self) -> None:
        """Stops the batcher and closes the cache and tokenizer connections."""
        if self.batcher is not None:
            await self.batcher.stop()
        if self.model is not None:
            labels = {"service": self.service, "model": self.model.info.name, "version": self.version}
            metrics.MODEL_LOADED.labels(**labels).set(0)
            metrics.MODEL_PRECISION.labels(**labels, precision=self.model.info.precision).set(0)
        if self._token_source is not None:
            await self._token_source.close()
            if self._local_tokens:  # a later start (a version loaded again) uses its new tokenizer
                self._token_source = None
        if self.close_cache:
            await self.outputs.close()
        self.model = None
        self.batcher = None

    async def warm(self) -> None:
        """One forward per batch shape before traffic (a new model version): the tuner's curve
        points when it measured one, else 1 and max_batch_size texts of 16 tokens. Off the loop."""
        model, batcher, _ = self._loaded()
        shapes = {(p.batch_size, p.text_tokens) for p in self.tuning_curve}
        if not shapes:
            shapes = {(1, 16), (batcher.budget.max_batch_size, 16)}
        for size, tokens in sorted(shapes):
            length = max(2, min(tokens, model.tokenizer.max_length))
            fits = max(1, min(size, batcher.budget.max_batch_tokens // length))
            await asyncio.to_thread(model.run_batch, [[1] * length] * fits)

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the batcher runs."""
        return self.model is not None and self.batcher is not None

    @property
    def info(self) -> EncoderInfo:
        """Model description; NotReady before the model is loaded."""
        if self.model is None:
            raise NotReady("model is still loading")
        return self.model.info

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache of this encoder's outputs (None: no cache)."""
        return self.outputs.cache

    @property
    def budget(self) -> BatchBudget:
        """The batch budget in use; NotReady before the model is loaded."""
        if self.batcher is None:
            raise NotReady("model is still loading")
        return self.batcher.budget

    @property
    def in_flight(self) -> int:
        """Inputs being computed now (identical ones counted once)."""
        return self.outputs.in_flight

    def _loaded(self) -> tuple[EncoderModel, Batcher[list[int], np.ndarray], TokenSource]:
        if self.model is None or self.batcher is None or self._token_source is None:
            raise NotReady("model is still loading")
        return self.model, self.batcher, self._token_source

    # --- inputs --------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """Tokens per input the model takes (longer inputs are cut); NotReady while loading."""
        return self._loaded()[2].max_length

    @property
    def vocab_size(self) -> int:
        """Token ids the model accepts are below this; NotReady while loading."""
        return self._loaded()[0].vocab_size

    async def tokenize(self, texts: Sequence[str], deadline: float | None) -> list[Encoded]:
        """Token ids of each text with special tokens, cut at max_length."""
        return await self._loaded()[2].encode(texts, deadline)

    def cut(self, ids: Sequence[int]) -> Encoded:
        """Pre-tokenized ids as given, cut at max_length by the tokenizer's rule."""
        return self._loaded()[0].tokenizer.truncate(list(ids))

    # --- task verbs ----------------------------------------------------------------------
    async def embed(
        self, inputs: Sequence[Encoded], deadline: float | None, *, skip_cache: bool = False
    ) -> EncoderOutput:
        """Pooled vectors of an embedding model (unnormalized), one per input."""
        return await self._run("embedding", inputs, deadline, skip_cache)

    async def predict(
        self, inputs: Sequence[Encoded], deadline: float | None, *, skip_cache: bool = False
    ) -> EncoderOutput:
        """Logits of a sequence-classification model (label order of info.labels), one row per input."""
        return await self._run("sequence-classification", inputs, deadline, skip_cache)

    async def token_logits(
        self, inputs: Sequence[Encoded], deadline: float | None, *, skip_cache: bool = False
    ) -> EncoderOutput:
        """Per-token logits of a token-classification model: one [tokens, labels] array per
        input (label order of info.labels), padding removed."""
        return await self._run("token-classification", inputs, deadline, skip_cache)

    @property
    def windower(self) -> TokenWindower:
        """Windows of texts at the model's length, with code-point offsets (the model's own
        tokenizer, in process: offsets never come from a remote token source)."""
        model = self._loaded()[0]
        if self._windower is None:
            self._windower = TokenWindower(model.tokenizer, model.tokenizer.max_length)
        return self._windower

    async def _run(
        self, task: Task, inputs: Sequence[Encoded], deadline: float | None, skip_cache: bool
    ) -> EncoderOutput:
        model, batcher, _ = self._loaded()
        if task != self.task:
            raise BackendFailure(f"model {model.info.name!r} is loaded for {self.task!r}, not {task!r}")
        info = model.info
        output = EncoderOutput([], [])

        async def compute(indices: list[int]) -> list[np.ndarray]:
            results = await batcher.run(
                [inputs[i].ids for i in indices], [len(inputs[i].ids) for i in indices], deadline
            )
            output.queue_seconds = max(r.queue_seconds for r in results)
            output.inference_seconds = max(r.inference_seconds for r in results)
            output.batch_sizes = [r.batch_size for r in results]
            return [r.value for r in results]

        if skip_cache and len(inputs) == 1:
            # Nothing to read, share or deduplicate: no key, straight to the batcher.
            output.rows = await compute([0])
            output.cached = [False]
        else:
            keys = [self._key(info, item.ids) for item in inputs]
            codec = (
                _TokenRowsCodec(info.dimensions)
                if task == "token-classification"
                else _RowCodec(info.dimensions)
            )
            items = await self.outputs.run(
                keys, compute, codec, deadline, skip_cache=skip_cache, model=info.name, version=self.version
            )
            output.rows = [item.value for item in items]
            output.cached = [item.cached for item in items]
        metrics.child(metrics.INPUT_TOKENS, self.service, info.name, self.version).inc(
            sum(len(item.ids) for item in inputs)
        )
        return output

    def _key(self, info: EncoderInfo, ids: Sequence[int]) -> str:
        """Identity of one input's output: model, revision, version, task, pooling, precision
        (when not fp32: fp32 keys stay as they were) and the exact token ids."""
        keys = self._keys
        if keys is None or keys[0] is not info:
            parts = [info.name, info.revision, self.version, self.task, info.pooling]
            if info.precision != "fp32":
                parts.append(info.precision)
            keys = self._keys = (info, self.outputs.key_maker(*parts))
        return keys[1](np.asarray(ids, np.int32).tobytes())
