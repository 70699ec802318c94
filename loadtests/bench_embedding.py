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

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONCURRENCY = (1, 8, 32, 64)
RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = {"short": 10, "medium": 40}  # words -> ~12 and ~50 tokens


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`textserve serve embedding` in a subprocess with the given batcher settings."""

    def __init__(self, max_batch_size: int) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "TEXTSERVE_EMBEDDING__SERVER__HOST": "127.0.0.1",
                "TEXTSERVE_EMBEDDING__SERVER__PORT": str(self.port),
                "TEXTSERVE_METRICS__PORT": str(free_port()),
                "TEXTSERVE_METRICS__HOST": "127.0.0.1",
                "TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": str(max_batch_size),
                "TEXTSERVE_CACHE__BACKEND": "none",
                "TEXTSERVE_LOG__LEVEL": "WARNING",
            }
        )
        self._log = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "textserve.cli", "serve", "embedding"],
            env=env,
            stderr=self._log,
        )
        self.address = f"127.0.0.1:{self.port}"

    async def wait_ready(self, limit_s: float = 120) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + limit_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError("embedding server exited during start-up")
                await asyncio.sleep(0.2)
        raise TimeoutError("embedding server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


async def drive(
    address: str, texts: list[str], concurrency: int, seconds: float
) -> tuple[float, list[float]]:
    """`concurrency` callers each sending one text per request, back to back; texts/s and latencies (ms)."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(concurrency, 4)))]
    stubs = [embedding_pb2_grpc.EmbeddingServiceStub(c) for c in channels]
    requests = [embedding_pb2.EmbedRequest(texts=[t], skip_cache=True) for t in texts]
    latencies: list[float] = []
    stop_at = 0.0
    errors = 0

    async def worker(index: int, record: bool) -> int:
        nonlocal errors
        stub = stubs[index % len(stubs)]
        count, cursor = 0, index
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await stub.Embed(requests[cursor % len(requests)], timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if record:
                latencies.append((time.perf_counter() - t0) * 1000)
            count += 1
            cursor += concurrency
        return count

    stop_at = time.perf_counter() + min(1.0, seconds / 3)  # warm-up
    await asyncio.gather(*(worker(i, False) for i in range(concurrency)))
    started = time.perf_counter()
    stop_at = started + seconds
    counts = await asyncio.gather(*(worker(i, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    if errors:
        print(f"warning: {errors} failed requests at concurrency {concurrency}", file=sys.stderr)
    return sum(counts) / elapsed, latencies


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
            server = ServerProcess(max_batch)
            try:
                await server.wait_ready()
                for concurrency in CONCURRENCY:
                    throughput, latencies = await drive(server.address, texts, concurrency, seconds)
                    points.append(
                        Point(
                            name,
                            setup,
                            concurrency,
                            throughput,
                            percentile(latencies, 50),
                            percentile(latencies, 99),
                            throughput / best,
                        )
                    )
            finally:
                server.stop()
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
