"""Embedding benchmark: raw model vs the gRPC service, batching on and off, one run, one table.

For short (~12 tokens) and medium (~50 tokens) texts it measures, on the same texts:
  * the raw model (no server): texts/s at each batch size, and its best;
  * single-text forward latency p50 (the floor for concurrency-1 latency);
  * the service (a `textserve serve embedding` subprocess) at concurrency 1, 8, 32, 64 with
    one text per request: throughput and p50/p99 latency;
  * the same service with batching off (max_batch_size=1).
Ratios are against the raw best-batch throughput measured in this same run.

    python -m loadtests.bench_embedding [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import Bind, LoadRun, Sender, bench_parser, closed_loop, percentile
from loadtests.serve import ServerProcess
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONCURRENCY = (1, 8, 32, 64)
RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = {"short": 10, "medium": 40}  # words -> ~12 and ~50 tokens


@dataclass
class Point:
    """One measured configuration."""

    length: str
    setup: str
    concurrency: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    ratio_to_raw_best: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def measure_raw(texts: list[str], seconds: float) -> tuple[dict[int, float], float, float]:
    """Raw model texts/s per batch size, and single-text forward p50 (ms), tokenization excluded."""
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel

    model = EncoderModel(ModelConfig())
    ids = [e.ids for e in model.tokenizer.encode_many(texts)]
    mean_tokens = statistics.mean(len(i) for i in ids)
    per_batch: dict[int, float] = {}
    for size in RAW_BATCHES:
        model.run_batch(ids[:size])  # warm-up
        done, started, cursor = 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds / len(RAW_BATCHES) * 2:
            batch = [ids[(cursor + j) % len(ids)] for j in range(size)]
            cursor += size
            model.run_batch(batch)
            done += size
        per_batch[size] = done / (time.perf_counter() - started)
    singles = []
    for i in range(200):
        t0 = time.perf_counter()
        model.run_batch([ids[i % len(ids)]])
        singles.append((time.perf_counter() - t0) * 1000)
    return per_batch, percentile(singles, 50), mean_tokens


def embed_call(texts: list[str], timeout: float = 30) -> Bind:
    """One text per Embed request, cache skipped."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    requests = [embedding_pb2.EmbedRequest(texts=[t], skip_cache=True) for t in texts]

    def bind(channel: grpc.aio.Channel) -> Sender:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        return lambda i: stub.Embed(requests[i % len(requests)], timeout=timeout)

    return bind


async def drive(address: str, texts: list[str], concurrency: int, seconds: float) -> LoadRun:
    """`concurrency` callers each sending one text per request, back to back, after a warm-up."""
    run = await closed_loop(
        address, embed_call(texts), concurrency, seconds, warmup_s=min(1.0, seconds / 3), channels=4
    )
    if run.errors or run.warmup_errors:
        print(
            f"warning: {run.errors + run.warmup_errors} failed requests at concurrency {concurrency}",
            file=sys.stderr,
        )
    return run


async def run(seconds: float) -> list[Point]:
    points: list[Point] = []
    texts_by_length = {name: make_texts(512, words) for name, words in LENGTHS.items()}
    raw: dict[str, tuple[dict[int, float], float, float]] = {}
    for name, texts in texts_by_length.items():
        raw[name] = measure_raw(texts, seconds)
    for name, texts in texts_by_length.items():
        per_batch, single_p50, mean_tokens = raw[name]
        best_size = max(per_batch, key=lambda size: per_batch[size])
        best = per_batch[best_size]
        points.append(
            Point(
                name,
                f"raw model, batch {best_size} (best)",
                0,
                best,
                float("nan"),
                float("nan"),
                1.0,
                {"mean_tokens": mean_tokens, "per_batch": per_batch},
            )
        )
        points.append(
            Point(name, "raw model, batch 1", 0, per_batch[1], single_p50, float("nan"), per_batch[1] / best)
        )
        for setup, max_batch in (("service, batching on", 32), ("service, batching off", 1)):
            settings = {
                "TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": str(max_batch),
                "TEXTSERVE_CACHE__BACKEND": "none",
            }
            async with ServerProcess(["embedding"], settings, ready_limit_s=120) as server:
                for concurrency in CONCURRENCY:
                    stats = (await drive(server.address(), texts, concurrency, seconds)).stats()
                    points.append(
                        Point(
                            name,
                            setup,
                            concurrency,
                            stats.throughput,
                            stats.p50_ms,
                            stats.p99_ms,
                            stats.throughput / best,
                        )
                    )
    return points


def render(points: list[Point]) -> str:
    """Markdown table with ratios and the two targets."""
    lines = [
        "| texts | setup | concurrency | texts/s | x raw best | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        conc = str(p.concurrency) if p.concurrency else "-"
        p50 = f"{p.p50_ms:.2f}" if p.p50_ms == p.p50_ms else "-"
        p99 = f"{p.p99_ms:.2f}" if p.p99_ms == p.p99_ms else "-"
        lines.append(
            f"| {p.length} | {p.setup} | {conc} | {p.texts_per_s:.0f} | {p.ratio_to_raw_best:.2f} "
            f"| {p50} | {p99} |"
        )
    lines.append("")
    for length in LENGTHS:
        rows = [p for p in points if p.length == length]
        single = next(p for p in rows if p.setup == "raw model, batch 1")
        on = [p for p in rows if p.setup == "service, batching on"]
        sat = max(on, key=lambda p: p.texts_per_s)
        c1 = next(p for p in on if p.concurrency == 1)
        tokens = rows[0].extra.get("mean_tokens", 0)
        lines.append(
            f"{length} (~{tokens:.0f} tokens): saturation {sat.texts_per_s:.0f} texts/s = "
            f"{sat.ratio_to_raw_best:.2f}x raw best (target >= 0.80); p50 at concurrency 1 "
            f"{c1.p50_ms:.2f} ms vs raw single forward {single.p50_ms:.2f} ms: "
            f"+{c1.p50_ms - single.p50_ms:.2f} ms "
            "(target <= 3 ms)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    parser.add_argument("--json", type=Path, help="also write the points as JSON")
    args = parser.parse_args()
    points = asyncio.run(run(args.seconds))
    print(render(points))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2, default=str))


if __name__ == "__main__":
    main()
