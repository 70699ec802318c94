"""Entity extraction of a token_classification classifier: validate, cache-through, windows,
per-token logits, aggregation (the ExtractEntities logic; no protobuf).

Each text is split by the model's own tokenizer into windows of the model's length that
overlap by `stride` tokens (runtime/token_classification.TokenWindower); every window of
every missed text goes to the Encoder's `token_logits` (the token-budget batcher) in one
call; the entities come out as transformers' token-classification pipeline gives them
(runtime/token_classification.entities). Each text's result goes through the response cache
(core/cache_through.py) under a key of the model name and revision, the kind, the strategy,
the stride, whether token labels were asked for, and the text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.scoring import SERVICE
from textserve.classifier.vector_source import Accounting, EncoderDescription, describe_encoder
from textserve.core import metrics
from textserve.core.cache import ResponseCache
from textserve.core.cache_through import CacheThrough
from textserve.core.config import ConfigError
from textserve.core.errors import InvalidInput, NotReady
from textserve.core.validation import check_texts
from textserve.quality.metrics import record_entities
from textserve.runtime.encoder_engine import Encoder
from textserve.runtime.token_classification import STRATEGIES, Strategy, TokenWindow, entities, token_labels
from textserve.runtime.tokenization import Encoded

_T = TypeVar("_T")
_THREAD_THRESHOLD = 16
"""Above this many texts, windowing and aggregation move off the event loop."""


@dataclass(frozen=True)
class EntitiesParams:
    """One ExtractEntities call, as the logic sees it."""

    texts: Sequence[str]
    aggregation_strategy: str = ""
    """none / simple / first / average / max; empty: the configured strategy."""
    stride: int = 0
    """Tokens shared by consecutive windows; 0: the configured stride."""
    include_tokens: bool = False
    skip_cache: bool = False


@dataclass(frozen=True)
class FoundEntity:
    """An entity (or a token): label, score, code-point span [start, end) and its text."""

    label: str
    score: float
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TextEntities:
    """The entities of one text (and its token labels when asked for)."""

    entities: list[FoundEntity]
    tokens: list[FoundEntity] = field(default_factory=list)
    windows: int = 1
    input_tokens: int = 0
    """Tokens of every window (special tokens included)."""


@dataclass
class EntitiesResult(Accounting):
    """One TextEntities per text, the model, and where time went."""

    results: list[TextEntities]
    model: EncoderDescription
    total_seconds: float = 0.0


class _EntitiesCodec:
    """A TextEntities as compact JSON."""

    def encode(self, value: TextEntities) -> bytes:
        return json.dumps(asdict(value), separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, entry: bytes) -> TextEntities | None:
        try:
            raw = json.loads(entry)
            return TextEntities(
                [FoundEntity(**item) for item in raw["entities"]],
                [FoundEntity(**item) for item in raw["tokens"]],
                int(raw["windows"]),
                int(raw["input_tokens"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class EntityExtractor:
    """ExtractEntities over a token-classification Encoder (see the module docstring)."""

    def __init__(
        self, encoder: Encoder, config: ClassifierServiceConfig, cache: ResponseCache | None
    ) -> None:
        self.encoder = encoder
        self.config = config
        self.results: CacheThrough[TextEntities] = CacheThrough(cache, SERVICE)
        """Results by text (the cache is the classifier's own, which closes it)."""

    def check(self) -> None:
        """At start, once the model is loaded: the configured stride fits its windows."""
        windower = self.encoder.windower
        if self.config.entities.stride > windower.max_stride:
            raise ConfigError(
                f"classifier.entities.stride={self.config.entities.stride} is too large for windows of "
                f"{windower.max_length} tokens ({windower.specials} special); at most {windower.max_stride}"
            )

    def _options(self, params: EntitiesParams) -> tuple[Strategy, int]:
        strategy = params.aggregation_strategy or self.config.entities.aggregation_strategy
        if strategy not in STRATEGIES:
            raise InvalidInput(
                "aggregation_strategy", f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}"
            )
        if params.stride < 0:
            raise InvalidInput(
                "stride", f"must be 0 (the configured stride) or positive; got {params.stride}"
            )
        stride = params.stride or self.config.entities.stride
        windower = self.encoder.windower
        if stride > windower.max_stride:
            raise InvalidInput(
                "stride",
                f"is {stride}; at most {windower.max_stride} for windows of {windower.max_length} tokens",
            )
        return cast(Strategy, strategy), stride

    async def extract(self, params: EntitiesParams, deadline: float | None = None) -> EntitiesResult:
        """The entities of every text; raises the error kinds of core/errors.py."""
        started = time.perf_counter()
        if not self.encoder.ready:
            raise NotReady("model is still loading")
        check_texts(params.texts, self.config.limits)
        strategy, stride = self._options(params)
        model = describe_encoder(self.encoder)
        result = EntitiesResult([], model)

        async def compute(indices: list[int]) -> list[TextEntities]:
            texts = [params.texts[i] for i in indices]
            tokenized = time.perf_counter()
            windows = await self._in_thread(len(texts), self._windows, texts, indices, stride)
            result.tokenize_seconds = time.perf_counter() - tokenized
            flat = [
                Encoded(window.ids, False, len(window.ids))
                for text_windows in windows
                for window in text_windows
            ]
            output = await self.encoder.token_logits(flat, deadline, skip_cache=params.skip_cache)
            result.queue_seconds = output.queue_seconds
            result.inference_seconds = output.inference_seconds
            return await self._in_thread(
                len(texts), self._aggregate, texts, windows, output.rows, strategy, params.include_tokens
            )

        keys = [
            self.results.key(
                model.name,
                model.revision,
                "token_classification",
                strategy,
                stride,
                params.include_tokens,
                text,
            )
            for text in params.texts
        ]
        items = await self.results.run(
            keys, compute, _EntitiesCodec(), deadline, skip_cache=params.skip_cache
        )
        result.results = [item.value for item in items]
        result.cached = sum(item.cached for item in items)
        self._record(model, result.results)
        result.total_seconds = time.perf_counter() - started
        return result

    @staticmethod
    async def _in_thread(count: int, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)`, in a worker thread when `count` texts make it long."""
        if count > _THREAD_THRESHOLD:
            return await asyncio.to_thread(function, *args)
        return function(*args)

    def _windows(self, texts: list[str], indices: list[int], stride: int) -> list[list[TokenWindow]]:
        windower = self.encoder.windower
        limit = self.config.entities.max_windows_per_text
        windows = []
        for text, index in zip(texts, indices, strict=True):
            text_windows = windower.windows(text, stride)
            if len(text_windows) > limit:
                raise InvalidInput(
                    f"texts[{index}]",
                    f"takes {len(text_windows)} windows of {windower.max_length} tokens at stride {stride}; "
                    f"max_windows_per_text={limit}",
                )
            windows.append(text_windows)
        return windows

    def _aggregate(
        self,
        texts: list[str],
        windows: list[list[TokenWindow]],
        rows: Sequence[np.ndarray],
        strategy: Strategy,
        include_tokens: bool,
    ) -> list[TextEntities]:
        labels = self.encoder.info.labels
        windower = self.encoder.windower
        answers = []
        position = 0
        for text, text_windows in zip(texts, windows, strict=True):
            logits = rows[position : position + len(text_windows)]
            position += len(text_windows)
            found = entities(text, text_windows, logits, labels, strategy, windower)
            tokens = token_labels(text, text_windows, logits, labels, windower) if include_tokens else []
            answers.append(
                TextEntities(
                    [FoundEntity(e.label, e.score, e.start, e.end, text[e.start : e.end]) for e in found],
                    [FoundEntity(e.label, e.score, e.start, e.end, text[e.start : e.end]) for e in tokens],
                    len(text_windows),
                    sum(len(window.ids) for window in text_windows),
                )
            )
        return answers

    def _record(self, model: EncoderDescription, results: list[TextEntities]) -> None:
        windows = metrics.child(metrics.ENTITY_WINDOWS, SERVICE, model.name)
        for item in results:
            windows.observe(item.windows)
        record_entities(
            SERVICE, model.name, model.revision, (e.label for item in results for e in item.entities)
        )
