"""Response-cache benchmark: hit path vs miss path latency, and throughput at a 90% hit ratio
vs no cache, in one run, one table.

Setups, all `textserve serve embedding` subprocesses started at once (same model, same
batcher settings) and a redis-server of the benchmark's own (or --redis-url):
  * redis: cache backend redis (shared Redis, MGET + pipelined SET);
  * memory: cache backend memory (in-process LRU), for reference;
  * none: cache backend none (the baseline every ratio is taken against).
Measured, one text (~50 tokens) per request, by asyncio gRPC clients in this process:
  * latency at concurrency 1: the hit path (texts warmed into the cache first), the miss
    path (a fresh text every request: MGET miss, model, background write), and no cache;
  * throughput at --concurrency callers where 90% of requests repeat one of --hot-texts
    warmed texts and 10% are fresh, vs the same request stream on the no-cache service.
The servers' own /metrics give the hit ratio really achieved and any cache errors.
Client and servers share the machine's cores, so absolute numbers are lower than on a
dedicated client; the ratios are what to compare.

    python -m loadtests.bench_cache                                 # full run (~2 min)
    python -m loadtests.bench_cache --seconds 3 --latency-requests 100   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import LoadRun, Sender, bench_parser, closed_loop, percentile
from loadtests.serve import ServerProcess, free_port, metric_total
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS_PER_TEXT = 40  # ~50 tokens
BACKENDS = ("redis", "memory", "none")
CACHE_COUNTERS = ("hits", "misses", "errors", "coalesced")


class RedisProcess:
    """A redis-server of the benchmark's own on a free port (no persistence)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="bench-redis-")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self._dir]
        self.proc = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no", "--logfile", ""],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def start_server(backend: str, redis_url: str, key_prefix: str) -> ServerProcess:
    """`textserve serve embedding` in a subprocess with the given cache backend (launched, not ready)."""
    settings = {
        "TEXTSERVE_CACHE__BACKEND": backend,
        "TEXTSERVE_CACHE__URL": redis_url,
        "TEXTSERVE_CACHE__KEY_PREFIX": key_prefix,
    }
    return ServerProcess(["embedding"], settings, label=f"embedding server ({backend})").launch()


def cache_counters(server: ServerProcess) -> dict[str, float]:
    """hits, misses, errors, coalesced of a server (from its /metrics)."""
    text = server.metrics()
    return {name: metric_total(text, f"textserve_cache_{name}_total") for name in CACHE_COUNTERS}


class Fresh:
    """Never-seen texts of the benchmark's length (a miss on every cache)."""

    def __init__(self) -> None:
        self._base = make_texts(64, WORDS_PER_TEXT, seed=11)
        self._count = 0
        self._run = uuid.uuid4().hex[:8]

    def next(self) -> str:
        self._count += 1
        return f"fresh {self._run} {self._count} {self._base[self._count % len(self._base)]}"


@dataclass
class Row:
    """One measured point."""

    measure: str
    setup: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ratio: float = float("nan")
    note: str = ""


async def embed_all(stub: Any, texts: list[str], concurrency: int = 16) -> None:
    """Sends each text once (warms the caches)."""
    from textserve.v1 import embedding_pb2

    queue = list(texts)

    async def worker() -> None:
        while queue:
            text = queue.pop()
            await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=60)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def latency(address: str, pick: Callable[[], str], requests: int) -> list[float]:
    """Latencies (ms) of `requests` sequential one-text requests; `pick()` gives each text."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    result: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        for _ in range(requests):
            request = embedding_pb2.EmbedRequest(texts=[pick()])
            t0 = time.perf_counter()
            await stub.Embed(request, timeout=60)
            result.append((time.perf_counter() - t0) * 1000)
    return result


async def throughput(
    address: str, hot: list[str], fresh: Fresh, hit_ratio: float, concurrency: int, seconds: float, seed: int
) -> LoadRun:
    """`concurrency` callers for `seconds`, a share `hit_ratio` of requests for a hot text."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    rng = random.Random(seed)

    def bind(channel: grpc.aio.Channel) -> Sender:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        def send(_: int) -> Any:
            text = rng.choice(hot) if rng.random() < hit_ratio else fresh.next()
            return stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=60)

        return send

    return await closed_loop(address, bind, concurrency, seconds, channels=4)


async def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, dict[str, float]]]:
    from textserve.v1 import embedding_pb2_grpc

    redis = None if args.redis_url else RedisProcess()
    redis_url = args.redis_url or (redis.url if redis else "")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    servers = {backend: start_server(backend, redis_url, prefix) for backend in BACKENDS}
    rows: list[Row] = []
    counters: dict[str, dict[str, float]] = {}
    try:
        await asyncio.gather(*(server.wait_ready() for server in servers.values()))
        hot = make_texts(args.hot_texts, WORDS_PER_TEXT, seed=5)
        fresh = Fresh()
        for server in servers.values():  # warm-up: model, connections, and the hot set in the caches
            async with grpc.aio.insecure_channel(server.address()) as channel:
                await embed_all(embedding_pb2_grpc.EmbeddingServiceStub(channel), hot)
            await asyncio.sleep(0.2)  # background cache writes land

        # Latency at concurrency 1, interleaved so that machine load drifts over all of them.
        samples: dict[tuple[str, str], list[float]] = {}
        rounds = 5
        per_round = max(1, args.latency_requests // rounds)
        hot_cycle = itertools.cycle(hot)  # redis and memory both draw latency_requests from it
        for _ in range(rounds):
            for backend in ("redis", "memory"):
                address = servers[backend].address()
                samples.setdefault((backend, "hit"), []).extend(
                    await latency(address, lambda: next(hot_cycle), per_round)
                )
                samples.setdefault((backend, "miss"), []).extend(
                    await latency(address, fresh.next, per_round)
                )
            samples.setdefault(("none", "no cache"), []).extend(
                await latency(servers["none"].address(), fresh.next, per_round)
            )
        base_p50 = percentile(samples[("none", "no cache")], 50)
        for (backend, path), values in samples.items():
            p50 = percentile(values, 50)
            rows.append(
                Row(
                    "latency",
                    f"{backend}: {path} path",
                    1,
                    1000 / p50,
                    p50,
                    percentile(values, 99),
                    p50 / base_p50,
                )
            )

        # Throughput at the hit ratio vs no cache, alternating setups per round.
        before = {backend: cache_counters(server) for backend, server in servers.items()}
        measured: dict[str, list[LoadRun]] = {backend: [] for backend in BACKENDS}
        for round_index in range(args.rounds):
            order = BACKENDS[round_index % 3 :] + BACKENDS[: round_index % 3]
            for backend in order:
                measured[backend].append(
                    await throughput(
                        servers[backend].address(),
                        hot,
                        fresh,
                        args.hit_ratio,
                        args.concurrency,
                        args.seconds,
                        seed=round_index,
                    )
                )
        after = {backend: cache_counters(server) for backend, server in servers.items()}
        for backend in BACKENDS:
            counters[backend] = {
                name: after[backend][name] - before[backend][name] for name in after[backend]
            }

        def summary(backend: str) -> tuple[float, list[float], int]:
            results = measured[backend]
            rates = sorted(result.throughput for result in results)
            return (
                rates[len(rates) // 2],
                [s * 1000 for result in results for s in result.latencies_s],
                sum(result.errors for result in results),
            )

        base_rate = summary("none")[0]
        for backend in BACKENDS:
            rate, values, failures = summary(backend)
            c = counters[backend]
            looked_up = c["hits"] + c["misses"]
            note = f"hit ratio {c['hits'] / looked_up:.2f}" if looked_up else "no cache"
            note += f", cache errors {c['errors']:.0f}, failed RPCs {failures}"
            label = "no cache (baseline)" if backend == "none" else f"{backend}, {args.hit_ratio:.0%} hot"
            rows.append(
                Row(
                    "throughput",
                    label,
                    args.concurrency,
                    rate,
                    percentile(values, 50),
                    percentile(values, 99),
                    rate / base_rate,
                    note,
                )
            )
    finally:
        for server in servers.values():
            server.stop()
        if redis is not None:
            redis.stop()
    return rows, counters


def render(rows: list[Row]) -> str:
    """Markdown table; `x baseline` is p50 / no-cache p50 for latency, rate / no-cache rate for throughput."""
    lines = [
        "| measure | setup | concurrency | requests/s | p50 ms | p99 ms | x baseline | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.measure} | {r.setup} | {r.concurrency} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.ratio:.2f} | {r.note} |"
        )
    latency_rows = {r.setup: r for r in rows if r.measure == "latency"}
    hit, miss = latency_rows["redis: hit path"], latency_rows["redis: miss path"]
    lines.append("")
    lines.append(
        f"redis hit path p50 {hit.p50_ms:.2f} ms vs miss path {miss.p50_ms:.2f} ms: "
        f"{miss.p50_ms / hit.p50_ms:.1f}x faster; miss path costs "
        f"+{miss.p50_ms - latency_rows['none: no cache path'].p50_ms:.2f} ms over no cache (p50)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="throughput measurement per setup and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median reported)")
    parser.add_argument("--latency-requests", type=int, default=500, help="requests per latency point")
    parser.add_argument("--concurrency", type=int, default=32, help="callers in the throughput test")
    parser.add_argument("--hot-texts", type=int, default=512, help="distinct warmed texts the hits come from")
    parser.add_argument("--hit-ratio", type=float, default=0.9, help="share of requests for a hot text")
    parser.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the rows and counters as JSON")
    args = parser.parse_args()
    rows, counters = asyncio.run(run(args))
    print(render(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "counters": counters}, indent=2))


if __name__ == "__main__":
    main()
