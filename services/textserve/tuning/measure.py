"""Measures an encoder's batching curve on the device it runs on, and tunes its batch budget.

`measure_curve` times the model's own `run_batch` (padding included, as the batcher calls
it) over a grid of text lengths x batch sizes, with synthetic texts drawn from the
model's vocabulary. Load on the machine drifts, so the grid is measured in many short
passes, each in a fresh random order, and each point keeps the median of its passes:
a burst of load then spreads over every point instead of skewing a few. Batch sizes past
the first one over the latency ceiling are not measured (they could never be chosen).
`tune` measures, then lets `choice.choose_budget` pick the budget, and returns a `TuningResult`.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any, Protocol

from textserve.core.config import BatcherConfig
from textserve.tuning.choice import choose_budget
from textserve.tuning.config import TuningConfig
from textserve.tuning.result import Provenance, TuningPoint, TuningResult, hardware_description, now_iso

log = logging.getLogger(__name__)

# Within one pass a point repeats its forward until this much time is spent, so tiny
# batches are timed over several runs instead of one timer-sized interval.
_SLICE_SECONDS = 0.01
# At most this many forwards per point per pass.
_MAX_RUNS_PER_SLICE = 32


class Vocabulary(Protocol):
    """What synthetic texts need of a tokenizer (runtime's TextTokenizer has it)."""

    @property
    def hf(self) -> Any:
        """The Hugging Face tokenizer: called on a text, `vocab_size`, `len()`."""
        ...

    @property
    def special_ids(self) -> AbstractSet[int]:
        """Ids of the special tokens, never drawn as text."""
        ...


class ModelDescription(Protocol):
    """What the tuner reads of a model's description (runtime's EncoderInfo has it)."""

    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def max_length(self) -> int: ...
    @property
    def precision(self) -> str: ...


class TunableModel(Protocol):
    """What the tuner needs of a model: its tokenizer, its description, its batch function."""

    @property
    def tokenizer(self) -> Vocabulary: ...
    @property
    def info(self) -> ModelDescription: ...

    def run_batch(self, batch: list[list[int]]) -> Sequence[Any]:
        """One forward over id lists padded to the longest."""
        ...


class SyntheticTexts:
    """Token id lists of an exact length: the model's special tokens around random vocabulary ids."""

    def __init__(self, tokenizer: Vocabulary, seed: int = 0) -> None:
        hf = tokenizer.hf
        framed = list(hf("", add_special_tokens=True)["input_ids"])
        self._prefix = framed[:1] if framed else []
        self._suffix = framed[1:] if len(framed) > 1 else []
        special = tokenizer.special_ids
        size = int(getattr(hf, "vocab_size", 0) or len(hf))
        self._vocab = [i for i in range(size) if i not in special]
        if not self._vocab:
            raise ValueError("the tokenizer has no ordinary tokens to build synthetic texts from")
        self._random = random.Random(seed)

    def ids(self, text_tokens: int) -> list[int]:
        """One text of `text_tokens` ids (special tokens included)."""
        body = max(0, text_tokens - len(self._prefix) - len(self._suffix))
        ids = self._prefix + self._random.choices(self._vocab, k=body) + self._suffix
        return ids[:text_tokens] if len(ids) > text_tokens else ids

    def batch(self, text_tokens: int, batch_size: int) -> list[list[int]]:
        """`batch_size` different texts of `text_tokens` ids each."""
        return [self.ids(text_tokens) for _ in range(batch_size)]


def grid_lengths(configured: Sequence[int], max_length: int) -> list[int]:
    """Text lengths to measure: the configured ones cut to the model's maximum, else 16, 32, ... max."""
    if configured:
        lengths = {min(int(v), max_length) for v in configured}
    else:
        lengths = {v for v in (2**k for k in range(4, 21)) if v < max_length} | {max_length}
    return sorted(v for v in lengths if v >= 1)


@dataclass
class _Point:
    text_tokens: int
    batch_size: int
    batch: list[list[int]]
    samples: list[float]

    def estimate(self) -> float:
        return statistics.median(self.samples) if self.samples else math.inf


def _time_slice(run_batch: Callable[[list[list[int]]], Any], batch: list[list[int]], guess: float) -> float:
    """Mean seconds of one forward, over as many runs as fit in one slice (one when `guess` is unknown)."""
    runs = 1
    if 0.0 < guess < _SLICE_SECONDS:
        runs = min(_MAX_RUNS_PER_SLICE, int(_SLICE_SECONDS / guess))
    started = time.perf_counter()
    for _ in range(runs):
        run_batch(batch)
    return (time.perf_counter() - started) / runs


def measure_curve(
    model: TunableModel,
    lengths: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    latency_ceiling_ms: float,
    seconds: float,
    min_repeats: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[TuningPoint]:
    """Throughput and median per-batch latency at each (text length, batch size) point.

    For each length, batch sizes are measured in increasing order up to and including the
    first one whose forward takes longer than the ceiling; while measuring, a length whose
    largest size turns out within the ceiling after all gets its next size added.
    """
    synthetic = SyntheticTexts(model.tokenizer, seed)
    ceiling = latency_ceiling_ms / 1000.0
    sizes = sorted(set(batch_sizes))
    rows: dict[int, list[_Point]] = {}

    def add(length: int, size: int) -> _Point:
        point = _Point(length, size, synthetic.batch(length, size), [])
        model.run_batch(point.batch)  # warm-up: the first run of a shape is slower
        rows.setdefault(length, []).append(point)
        return point

    # Pruning pass: sizes in increasing order until one is over the ceiling (best of two runs).
    for length in sorted(set(lengths)):
        for size in sizes:
            point = add(length, size)
            first = _time_slice(model.run_batch, point.batch, 0.0)
            if min(first, _time_slice(model.run_batch, point.batch, first)) > ceiling:
                break
    if progress:
        progress(f"measuring {sum(map(len, rows.values()))} points for {seconds:.0f} s")
    shuffler = random.Random(seed)
    started = time.perf_counter()
    passes = 0
    while True:
        points = [point for row in rows.values() for point in row]
        shuffler.shuffle(points)
        for point in points:
            point.samples.append(_time_slice(model.run_batch, point.batch, point.estimate()))
        passes += 1
        out_of_time = time.perf_counter() - started >= seconds
        if out_of_time and min(len(point.samples) for point in points) >= min_repeats:
            break
        if not out_of_time:
            # A burst of load during the pruning pass may have stopped a length too early:
            # while its largest size measures within the ceiling, measure the next one too.
            for length, row in rows.items():
                last = row[-1]
                following = [size for size in sizes if size > last.batch_size]
                if following and len(last.samples) >= min_repeats and last.estimate() <= ceiling:
                    add(length, following[0])
    points = [point for row in rows.values() for point in row]
    log.info("tuning curve measured", extra={"points": len(points), "passes": passes})
    curve: list[TuningPoint] = []
    for point in sorted(points, key=lambda p: (p.text_tokens, p.batch_size)):
        latency = point.estimate()
        curve.append(
            TuningPoint(
                text_tokens=point.text_tokens,
                batch_size=point.batch_size,
                batch_tokens=point.text_tokens * point.batch_size,
                batch_latency_ms=latency * 1000.0,
                texts_per_second=point.batch_size / latency,
                repeats=len(point.samples),
            )
        )
    return curve


def tune(
    model: TunableModel,
    config: TuningConfig,
    *,
    batcher: BatcherConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuningResult:
    """Measures the curve on this device and chooses (max_batch_size, max_batch_tokens).

    The queue is simulated with the grouping policy of `batcher` (default: BatcherConfig()).
    """
    batching = batcher or BatcherConfig()
    started = time.perf_counter()
    info = model.info
    max_length = info.max_length
    lengths = grid_lengths(config.text_tokens, max_length)
    curve = measure_curve(
        model,
        lengths,
        config.batch_sizes,
        latency_ceiling_ms=config.latency_ceiling_ms,
        seconds=config.seconds,
        min_repeats=config.min_repeats,
        progress=progress,
    )
    mix = [min(v, max_length) for v in config.mix_text_tokens] or lengths
    if progress:
        progress("choosing the budget")
    choice = choose_budget(
        curve,
        mix=mix,
        max_length=max_length,
        latency_ceiling_ms=config.latency_ceiling_ms,
        concurrency=config.concurrency,
        group_by_length=batching.group_by_length,
        length_ratio=batching.group_length_ratio or None,
    )
    chosen = choice.chosen
    return TuningResult(
        budget=replace(chosen.budget, source="autotune"),
        predicted_texts_per_second=chosen.texts_per_second,
        worst_batch_latency_ms=chosen.worst_batch_latency_ms,
        latency_ceiling_ms=config.latency_ceiling_ms,
        mix_text_tokens=list(mix),
        concurrency=config.concurrency,
        provenance=Provenance(
            model=info.name,
            revision=info.revision,
            backend=info.backend,
            device=info.device,
            precision=info.precision,
            hardware=hardware_description(info.device),
            created=now_iso(),
            measure_seconds=time.perf_counter() - started,
        ),
        curve=curve,
        fixed_sizes=[(e.budget.max_batch_size, e.texts_per_second) for e in choice.fixed_sizes],
    )
