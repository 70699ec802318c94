"""What every benchmark shares: percentiles, a ratio table printer, one JSON result format,
and the closed-loop load driver.

A benchmark builds a `BenchResult` (a table of rows, plus latency-vs-throughput series
when it sweeps load), prints it with `print_table`, and writes it with
`BenchResult.write(path)` when given `--json PATH`. `loadtests/report.py` runs every
`bench_*.py` with `--json` and collects the files into one report; `load_result` also
reads the older ad-hoc JSON shapes (lists of points, {"rows": [...]}) so a benchmark
keeps working in the report before it moves to this format.

The format (version 1):

    {"format": "textserve-bench/1", "bench": "embedding", "title": "...",
     "generated": "2025-01-01T00:00:00Z", "host": {"cpus": 2, "load1": 1.5, ...},
     "columns": ["setup", "concurrency", "texts_per_s", "p50_ms", "p99_ms", "ratio"],
     "rows": [{"setup": "service", "concurrency": 8, ...}, ...],
     "series": [{"name": "embedding: Embed", "throughput_unit": "texts/s",
                 "points": [{"concurrency": 1, "throughput": 120.5, "p50_ms": 8.1, "p99_ms": 12.0}]}],
     "notes": ["..."]}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

FORMAT = "textserve-bench/1"

THROUGHPUT_KEYS = ("throughput", "throughput_rps", "requests_per_s", "texts_per_s", "tokens_per_s", "rps")
"""Row keys read as throughput when a benchmark's JSON is not in FORMAT (first found wins)."""
LABEL_KEYS = ("setup", "length", "measure", "service", "method", "mode")
"""Row keys that name a series when a benchmark's JSON is not in FORMAT."""


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: --help shows its module docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_bench(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Coroutine[Any, Any, BenchResult]]
) -> None:
    """Parses the command line, runs the benchmark, writes its result to --json PATH if given."""
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        result.write(args.json)


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles (ms) and throughput of one measured run."""

    count: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(
        cls, latencies_s: Sequence[float], seconds: float, items: int | None = None, errors: int = 0
    ) -> LatencyStats:
        """Stats of successful calls' latencies (seconds) over a run of `seconds`.

        Throughput counts `items` (texts, tokens) when given, else calls.
        """
        done = len(latencies_s) if items is None else items
        ms = [v * 1000.0 for v in latencies_s]
        return cls(
            count=len(latencies_s),
            errors=errors,
            seconds=seconds,
            throughput=done / seconds if seconds > 0 else 0.0,
            p50_ms=percentile(ms, 50),
            p90_ms=percentile(ms, 90),
            p99_ms=percentile(ms, 99),
            mean_ms=sum(ms) / len(ms) if ms else float("nan"),
        )


Sender = Callable[[int], Awaitable[Any]]
"""Sends request number i (callers stride through 0, 1, 2, ...) and awaits the reply."""
Bind = Callable[["grpc.aio.Channel"], Sender]
"""Makes a Sender on a channel (build stubs here, once per channel)."""


@dataclass
class LoadRun:
    """What `closed_loop` measured: successful calls' latencies (seconds) over `seconds`."""

    latencies_s: list[float]
    seconds: float
    errors: int = 0
    warmup_errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful calls per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def stats(self) -> LatencyStats:
        return LatencyStats.of(self.latencies_s, self.seconds, errors=self.errors)


OFF_ON = ("off", "on")
"""The two modes of an A/B benchmark; rounds alternate their order (machines drift)."""


@dataclass
class Workload:
    """One workload's measurements, one per round, for each mode of OFF_ON."""

    runs: dict[str, list[LatencyStats]] = field(default_factory=lambda: {mode: [] for mode in OFF_ON})

    def median(self, mode: str, key: str) -> float:
        return statistics.median(getattr(stats, key) for stats in self.runs[mode])

    def ratio_median(self, key: str) -> float:
        """Median over rounds of on / off (rounds are paired in order)."""
        pairs = zip(self.runs["off"], self.runs["on"], strict=False)
        return statistics.median(
            getattr(on, key) / getattr(off, key) for off, on in pairs if getattr(off, key) > 0
        )


async def closed_loop(
    address: str,
    bind: Bind,
    concurrency: int,
    seconds: float,
    *,
    warmup_s: float = 0.0,
    channels: int = 1,
    before_measure: Callable[[], Awaitable[None]] | None = None,
    after_measure: Callable[[], Awaitable[None]] | None = None,
) -> LoadRun:
    """`concurrency` callers, each sending its next request as soon as the last returns.

    Caller k sends requests k, k + concurrency, k + 2 * concurrency, ... over up to
    `channels` channels (round robin). The first `warmup_s` seconds run the same load
    unmeasured; `before_measure` / `after_measure` run just before and after the measured
    `seconds` (e.g. to read server counters). A failed call (grpc.aio.AioRpcError) counts
    as an error and is not timed.
    """
    import grpc

    opened = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(channels, concurrency)))]
    senders = [bind(channel) for channel in opened]
    try:
        # Request `cursor` belongs to caller cursor % concurrency, which keeps one channel.
        return await closed_loop_calls(
            lambda cursor: senders[cursor % concurrency % len(senders)](cursor),
            concurrency,
            seconds,
            warmup_s=warmup_s,
            before_measure=before_measure,
            after_measure=after_measure,
            failures=(grpc.aio.AioRpcError,),
        )
    finally:
        for channel in opened:
            await channel.close(None)


async def closed_loop_calls(
    send: Callable[[int], Awaitable[Any]],
    concurrency: int,
    seconds: float,
    *,
    warmup_s: float = 0.0,
    before_measure: Callable[[], Awaitable[None]] | None = None,
    after_measure: Callable[[], Awaitable[None]] | None = None,
    failures: tuple[type[BaseException], ...] = (Exception,),
) -> LoadRun:
    """`closed_loop` over any awaitable call (a `textserve.client` method, say), not a channel.

    Caller k awaits send(k), send(k + concurrency), ... back to back; an exception of
    `failures` counts as an error and is not timed (others propagate).
    """
    latencies: list[float] = []
    errors = [0, 0]  # warm-up, measured

    async def caller(index: int, stop_at: float, measured: bool) -> None:
        cursor = index
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await send(cursor)
            except failures:
                errors[measured] += 1
                continue
            finally:
                cursor += concurrency
            if measured:
                latencies.append(time.perf_counter() - started)

    if warmup_s > 0:
        warm_until = time.perf_counter() + warmup_s
        await asyncio.gather(*(caller(i, warm_until, False) for i in range(concurrency)))
    if before_measure is not None:
        await before_measure()
    began = time.perf_counter()
    await asyncio.gather(*(caller(i, began + seconds, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    if after_measure is not None:
        await after_measure()
    return LoadRun(latencies, elapsed, errors=errors[1], warmup_errors=errors[0])


@dataclass
class Series:
    """One latency-vs-throughput curve (points in increasing load)."""

    name: str
    throughput_unit: str = "requests/s"
    points: list[dict[str, float]] = field(default_factory=list)

    def add(self, concurrency: float, throughput: float, p50_ms: float, p99_ms: float) -> None:
        self.points.append(
            {"concurrency": concurrency, "throughput": throughput, "p50_ms": p50_ms, "p99_ms": p99_ms}
        )


def host_info() -> dict[str, Any]:
    """Where the numbers were taken (they mean little without it)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):  # getloadavg is missing off Unix
        info["load1"], info["load5"], info["load15"] = (round(v, 2) for v in os.getloadavg())
    return info


@dataclass
class BenchResult:
    """One benchmark's results: a table, optional curves, notes."""

    bench: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    host: dict[str, Any] = field(default_factory=host_info)

    def add_row(self, **values: Any) -> dict[str, Any]:
        """Appends a row; new keys become columns (in first-seen order)."""
        for key in values:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(dict(values))
        return self.rows[-1]

    def curve(self, name: str, throughput_unit: str = "requests/s") -> Series:
        """The series called `name` (created on first use)."""
        for item in self.series:
            if item.name == name:
                return item
        self.series.append(Series(name, throughput_unit))
        return self.series[-1]

    def add_ratio(
        self, rows: Iterable[dict[str, Any]], key: str, baseline: float, name: str = "ratio"
    ) -> None:
        """`add_ratio` on some of this result's rows, with `name` added to the columns."""
        add_ratio(rows, key, baseline, name)
        if name not in self.columns:
            self.columns.append(name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT
        return data

    def write(self, path: Path) -> None:
        """Writes the result as JSON (NaN and infinities become null)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(self.to_json()), indent=2, default=str))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def add_ratio(rows: Iterable[dict[str, Any]], key: str, baseline: float, name: str = "ratio") -> None:
    """Sets rows[name] = rows[key] / baseline (nan when the baseline is 0)."""
    for row in rows:
        value = row.get(key)
        row[name] = value / baseline if isinstance(value, (int, float)) and baseline else float("nan")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table (what the report embeds and what benchmarks print)."""
    if not rows:
        return "_(no rows)_"
    columns = list(columns or [key for row in rows for key in row if not isinstance(row[key], (dict, list))])
    columns = list(dict.fromkeys(columns))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = ""
) -> None:
    """Prints `format_table`, under a title."""
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns))


def _series_from_rows(rows: list[dict[str, Any]]) -> list[Series]:
    """Curves out of rows that carry a throughput and p50/p99 (older, ad-hoc formats)."""
    found: dict[str, Series] = {}
    for row in rows:
        key = next((k for k in THROUGHPUT_KEYS if isinstance(row.get(k), (int, float))), None)
        if key is None or not isinstance(row.get("p50_ms"), (int, float)):
            continue
        name = " / ".join(str(row[k]) for k in LABEL_KEYS if isinstance(row.get(k), str)) or "all"
        unit = (
            key.replace("_per_s", "/s").replace("throughput_rps", "requests/s").replace("rps", "requests/s")
        )
        series = found.setdefault(name, Series(name, unit))
        series.add(
            float(row.get("concurrency", len(series.points) + 1)),
            float(row[key]),
            float(row["p50_ms"]),
            float(row.get("p99_ms", row["p50_ms"])),
        )
    for series in found.values():
        series.points.sort(key=lambda p: p["concurrency"])
    return [s for s in found.values() if len(s.points) >= 2]


def load_result(path: Path, bench: str) -> BenchResult:
    """Reads a benchmark's JSON: FORMAT as written by BenchResult, or an older shape."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("format") == FORMAT:
        result = BenchResult(
            bench=data.get("bench", bench),
            title=data.get("title", bench),
            columns=list(data.get("columns", [])),
            rows=list(data.get("rows", [])),
            notes=list(data.get("notes", [])),
        )
        result.generated = data.get("generated", result.generated)
        result.host = data.get("host", result.host)
        result.series = [
            Series(s["name"], s.get("throughput_unit", "requests/s"), list(s.get("points", [])))
            for s in data.get("series", [])
        ]
        return result
    result = BenchResult(bench=bench, title=bench)
    if isinstance(data, list):
        rows = [r for r in data if isinstance(r, dict)]
    elif isinstance(data, dict) and isinstance(data.get("rows"), list):
        rows = [r for r in data["rows"] if isinstance(r, dict)]
        result.notes = [f"{k}: {json.dumps(v, default=str)[:300]}" for k, v in data.items() if k != "rows"]
    elif isinstance(data, dict):
        rows = [{"key": k, "value": json.dumps(v, default=str)[:200]} for k, v in data.items()]
    else:
        rows = []
    for row in rows:
        result.add_row(**{k: v for k, v in row.items() if not isinstance(v, (dict, list))})
    result.series = _series_from_rows(rows)
    return result
