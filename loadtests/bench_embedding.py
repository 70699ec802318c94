"""Embedding benchmark: the raw model against the service reached three ways, one run, one table.

For short (~12 tokens) and medium (~50 tokens) texts, no response cache, on the same texts:
  * the raw model (no server, in this process): texts/s at each batch size (a sweep), then its
    best batch again in every round below (the ratios' baseline), and batch 1;
  * one `textserve serve embedding` subprocess (batching on), reached by
      - raw stubs, one text per Embed call, at 1, 32 and 64 concurrent callers;
      - the client package (`textserve.client.AsyncTextserveClient.embed`, one long-lived
        client whose merging turns concurrent single-text calls into fewer RPCs) at 1, 32 and
        64 concurrent single-text callers;
      - bulk calls of 32 texts each (raw stubs, 4 callers);
  * the floor of a Python gRPC server (loadtests/floor_server.py, a subprocess: the same model
    behind a bare grpc.aio Embed handler and a bare batcher) under 32 raw-stub callers: what
    the transport and the model allow before anything textserve does per call;
    all measured in interleaved rounds (every setup once per round, `--rounds` rounds) and
    reported as medians over the rounds: texts/s, the ratio to the raw best batch, p50/p99,
    and the server's CPU time per call and per text (utime + stime of the server process
    from /proc/<pid>/stat over the measured seconds, divided by the calls and texts served
    in them; less sensitive to other load on the machine than throughput) and the
    benchmark process's own CPU per text (the load generator shares the cores);
  * the same service with batching off (max_batch_size=1), raw stubs, one round.

    python -m loadtests.bench_embedding [--seconds 5] [--rounds 3] [--lengths short] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from tqdm import tqdm

from loadtests.common import (
    BenchResult,
    Bind,
    LoadRun,
    Sender,
    bench_parser,
    closed_loop,
    closed_loop_calls,
    percentile,
    print_table,
    run_bench,
)
from loadtests.floor_server import FloorProcess
from loadtests.serve import ServerProcess
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONCURRENCY = (1, 8, 32, 64)
"""Callers of `drive` in other benchmarks."""
SERVICE_CONCURRENCY = (1, 32, 64)
BULK_TEXTS = 32
FLOOR_SETUP = "grpc.aio floor server, 1 text/call"
"""loadtests/floor_server.py under raw stubs: what a Python gRPC server allows at the least per call."""
BULK_CONCURRENCY = 4
RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = {"short": 10, "medium": 40}  # words -> ~12 and ~50 tokens


def load_raw(texts: list[str]) -> tuple[Any, list[list[int]]]:
    """The embedding model as the service loads it (no server), and the texts' token ids."""
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel

    model = EncoderModel(ModelConfig())
    return model, [e.ids for e in model.tokenizer.encode_many(texts)]


def raw_throughput(model: Any, ids: list[list[int]], size: int, seconds: float) -> tuple[float, float]:
    """Texts/s of the raw model at batch `size` for `seconds`, and this process's CPU-ms per text."""
    model.run_batch(ids[:size])  # warm-up
    done, started, cursor, cpu = 0, time.perf_counter(), 0, time.process_time()
    while time.perf_counter() - started < seconds:
        batch = [ids[(cursor + j) % len(ids)] for j in range(size)]
        cursor += size
        model.run_batch(batch)
        done += size
    return done / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / done


def measure_raw(  # the other benchmarks' sweep
    texts: list[str], seconds: float, cpu_ms_per_text: dict[int, float] | None = None
) -> tuple[dict[int, float], float, float]:
    """Raw model texts/s per batch size, and single-text forward p50 (ms), tokenization excluded;
    `cpu_ms_per_text` (when given) receives this process's CPU time per text at each batch size."""
    model, ids = load_raw(texts)
    mean_tokens = statistics.mean(len(i) for i in ids)
    per_batch: dict[int, float] = {}
    for size in RAW_BATCHES:
        per_batch[size], cpu = raw_throughput(model, ids, size, seconds / len(RAW_BATCHES) * 2)
        if cpu_ms_per_text is not None:
            cpu_ms_per_text[size] = cpu
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


@dataclass
class Sample:
    """One measured round of a setup."""

    texts_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_call: float
    bench_cpu_ms_per_text: float
    errors: int


@dataclass
class Hooks:
    """Called just before and after the measured seconds of a load."""

    before: Callable[[], Awaitable[None]]
    after: Callable[[], Awaitable[None]]


class CpuCounted(Protocol):
    """A server process whose CPU time can be read (ServerProcess, FloorProcess)."""

    def cpu_seconds(self) -> float: ...


async def _measured(
    server: CpuCounted, texts_per_call: int, run: Callable[[Hooks], Awaitable[LoadRun]]
) -> Sample:
    """Runs one load with the server's and this process's CPU counters read around the measured part."""
    marks: dict[str, float] = {}

    async def before() -> None:
        marks["server"], marks["bench"] = server.cpu_seconds(), time.process_time()

    async def after() -> None:
        marks["server"] = server.cpu_seconds() - marks["server"]
        marks["bench"] = time.process_time() - marks["bench"]

    load = await run(Hooks(before, after))
    calls = max(1, load.count)
    stats = load.stats()
    return Sample(
        texts_per_s=load.throughput * texts_per_call,
        p50_ms=stats.p50_ms,
        p99_ms=stats.p99_ms,
        server_cpu_ms_per_call=marks["server"] * 1000 / calls,
        bench_cpu_ms_per_text=marks["bench"] * 1000 / (calls * texts_per_call),
        errors=load.errors + load.warmup_errors,
    )


def bulk_call(texts: list[str], per_call: int, timeout: float = 60) -> Bind:
    """`per_call` distinct texts per Embed request, cache skipped."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    requests = [
        embedding_pb2.EmbedRequest(
            texts=[texts[(i * per_call + j) % len(texts)] for j in range(per_call)], skip_cache=True
        )
        for i in range(max(1, len(texts) // per_call))
    ]

    def bind(channel: grpc.aio.Channel) -> Sender:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        return lambda i: stub.Embed(requests[i % len(requests)], timeout=timeout)

    return bind


async def _service_rows(
    name: str, texts: list[str], seconds: float, rounds: int, raw_best: Callable[[], tuple[float, float]]
) -> tuple[list[dict[str, Any]], float, float]:
    """Every service setup on one server, interleaved rounds with the raw model at its best batch
    (`raw_best`, run in a thread while the server idles); one row per setup (medians), and the
    raw best's median texts/s and CPU-ms per text over the same rounds."""
    from textserve.client import AsyncTextserveClient

    warmup = min(1.0, seconds / 3)
    settings = {"TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": "32", "TEXTSERVE_CACHE__BACKEND": "none"}
    samples: dict[tuple[str, int, int], list[Sample]] = {}
    raw_rounds: list[tuple[float, float]] = []
    async with (
        ServerProcess(["embedding"], settings, ready_limit_s=120) as server,
        FloorProcess(max_batch=32) as floor,
    ):
        address = server.address()
        client = AsyncTextserveClient(embedding=address)

        def stubs(
            bind: Bind, concurrency: int, target: str = address
        ) -> Callable[[Hooks], Awaitable[LoadRun]]:
            return lambda hooks: closed_loop(
                target,
                bind,
                concurrency,
                seconds,
                warmup_s=warmup,
                channels=4,
                before_measure=hooks.before,
                after_measure=hooks.after,
            )

        def through_client(concurrency: int) -> Callable[[Hooks], Awaitable[LoadRun]]:
            return lambda hooks: closed_loop_calls(
                lambda i: client.embed(texts[i % len(texts)], skip_cache=True),
                concurrency,
                seconds,
                warmup_s=warmup,
                before_measure=hooks.before,
                after_measure=hooks.after,
            )

        setups: list[tuple[str, int, int, Callable[[Hooks], Awaitable[LoadRun]], CpuCounted]] = [
            *(
                ("raw stubs, 1 text/call", c, 1, stubs(embed_call(texts), c), server)
                for c in SERVICE_CONCURRENCY
            ),
            *(("client package, 1 text/call", c, 1, through_client(c), server) for c in SERVICE_CONCURRENCY),
            (
                f"raw stubs, bulk {BULK_TEXTS} texts/call",
                BULK_CONCURRENCY,
                BULK_TEXTS,
                stubs(bulk_call(texts, BULK_TEXTS), BULK_CONCURRENCY),
                server,
            ),
            (FLOOR_SETUP, 32, 1, stubs(embed_call(texts), 32, floor.address()), floor),
        ]
        try:
            for round_index in tqdm(range(rounds), desc=f"{name}: rounds", leave=False):
                raw_rounds.append(await asyncio.to_thread(raw_best))
                for label, concurrency, per_call, load, measured_server in setups:
                    sample = await _measured(measured_server, per_call, load)
                    samples.setdefault((label, concurrency, per_call), []).append(sample)
                    if sample.errors:
                        print(
                            f"warning: {sample.errors} failed calls: {label} c={concurrency} "
                            f"round {round_index}",
                            file=sys.stderr,
                        )
        finally:
            await client.close()
    best = statistics.median(t for t, _ in raw_rounds)
    rows = []
    for (label, concurrency, per_call), measured in samples.items():
        per_call_cpu = statistics.median(m.server_cpu_ms_per_call for m in measured)
        rows.append(
            {
                "texts": name,
                "setup": label,
                "concurrency": concurrency,
                "texts_per_s": statistics.median(m.texts_per_s for m in measured),
                "x_raw_best": statistics.median(m.texts_per_s for m in measured) / best,
                "p50_ms": statistics.median(m.p50_ms for m in measured),
                "p99_ms": statistics.median(m.p99_ms for m in measured),
                "server_cpu_ms_per_call": per_call_cpu,
                "server_cpu_ms_per_text": per_call_cpu / per_call,
                "bench_cpu_ms_per_text": statistics.median(m.bench_cpu_ms_per_text for m in measured),
                "rounds": len(measured),
            }
        )
    return rows, best, statistics.median(c for _, c in raw_rounds)


async def _batching_off_rows(
    name: str, texts: list[str], seconds: float, best: float
) -> list[dict[str, Any]]:
    """The service with max_batch_size=1, raw stubs, one round (the cost of not batching)."""
    settings = {"TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": "1", "TEXTSERVE_CACHE__BACKEND": "none"}
    rows = []
    async with ServerProcess(["embedding"], settings, ready_limit_s=120) as server:
        for concurrency in SERVICE_CONCURRENCY:

            def load(hooks: Hooks, c: int = concurrency) -> Awaitable[LoadRun]:
                return closed_loop(
                    server.address(),
                    embed_call(texts),
                    c,
                    seconds,
                    warmup_s=min(1.0, seconds / 3),
                    channels=4,
                    before_measure=hooks.before,
                    after_measure=hooks.after,
                )

            sample = await _measured(server, 1, load)
            rows.append(
                {
                    "texts": name,
                    "setup": "raw stubs, batching off",
                    "concurrency": concurrency,
                    "texts_per_s": sample.texts_per_s,
                    "x_raw_best": sample.texts_per_s / best,
                    "p50_ms": sample.p50_ms,
                    "p99_ms": sample.p99_ms,
                    "server_cpu_ms_per_call": sample.server_cpu_ms_per_call,
                    "server_cpu_ms_per_text": sample.server_cpu_ms_per_call,
                    "bench_cpu_ms_per_text": sample.bench_cpu_ms_per_text,
                    "rounds": 1,
                }
            )
    return rows


async def run(args: argparse.Namespace) -> BenchResult:
    result = BenchResult("embedding", "Embedding: raw model vs raw stubs, the client package and bulk calls")
    for name in args.lengths:
        texts = make_texts(512, LENGTHS[name])
        model, ids = load_raw(texts)
        mean_tokens = statistics.mean(len(i) for i in ids)
        sweep = {size: raw_throughput(model, ids, size, args.seconds / 2) for size in RAW_BATCHES}
        best_size = max(sweep, key=lambda size: sweep[size][0])
        singles = []
        for i in range(200):
            t0 = time.perf_counter()
            model.run_batch([ids[i % len(ids)]])
            singles.append((time.perf_counter() - t0) * 1000)
        single_p50 = percentile(singles, 50)
        # The raw best batch runs once in every round, interleaved with the service's setups.
        service, best, best_cpu = await _service_rows(
            name,
            texts,
            args.seconds,
            args.rounds,
            functools.partial(raw_throughput, model, ids, best_size, args.seconds),
        )
        result.add_row(
            texts=name,
            setup=f"raw model, batch {best_size} (best)",
            concurrency=None,
            texts_per_s=best,
            x_raw_best=1.0,
            server_cpu_ms_per_text=best_cpu,  # the model alone, in this process
            rounds=args.rounds,
        )
        result.add_row(
            texts=name,
            setup="raw model, batch 1",
            concurrency=None,
            texts_per_s=sweep[1][0],
            x_raw_best=sweep[1][0] / sweep[best_size][0],  # within the sweep, before the rounds
            p50_ms=single_p50,
        )
        if not args.skip_batching_off:
            service += await _batching_off_rows(name, texts, args.seconds, best)
        at32 = {r["setup"]: r for r in service if r["concurrency"] == 32}
        stubs32, client32 = at32["raw stubs, 1 text/call"], at32["client package, 1 text/call"]
        bulk = next(r for r in service if r["setup"].startswith("raw stubs, bulk"))
        # What a call costs the server beyond its text's share of batched model work: the
        # single-text call's CPU less the per-text CPU of bulk calls (same server, same rounds).
        for row in service:
            if row["setup"].endswith("1 text/call"):
                over = row["server_cpu_ms_per_call"] - bulk["server_cpu_ms_per_text"]
                row["cpu_ms_per_call_over_bulk"] = over
        for row in service:
            result.add_row(**row)
        stubs_cpu, client_cpu = stubs32["server_cpu_ms_per_call"], client32["server_cpu_ms_per_call"]
        result.notes.append(
            f"{name} (~{mean_tokens:.0f} tokens): at 32 single-text callers the client package reaches "
            f"{client32['x_raw_best']:.2f}x raw best (target >= 0.9), raw stubs {stubs32['x_raw_best']:.2f}x "
            f"(target >= 0.8); server CPU per single-text call at 32 callers: raw stubs "
            f"{stubs_cpu:.2f} ms, client {client_cpu:.2f} ms, "
            f"of which beyond the bulk per-text cost {stubs32['cpu_ms_per_call_over_bulk']:.2f} / "
            f"{client32['cpu_ms_per_call_over_bulk']:.2f} ms (target <= 0.5 ms); the model alone "
            f"{best_cpu:.2f} CPU-ms per text at batch {best_size}; raw batch-1 forward p50 "
            f"{single_p50:.2f} ms"
        )
        floor32 = at32[FLOOR_SETUP]
        result.notes.append(
            f"{name}: the grpc.aio floor server (loadtests/floor_server.py: tokenize, a bare batcher, "
            f"no interceptors, metrics or versions) reaches {floor32['x_raw_best']:.2f}x raw best at 32 "
            f"raw-stub callers, {floor32['server_cpu_ms_per_call']:.2f} server CPU-ms per call; textserve's "
            f"raw stubs reach {stubs32['x_raw_best'] / floor32['x_raw_best']:.2f}x the floor's throughput "
            f"at {stubs_cpu - floor32['server_cpu_ms_per_call']:.2f} CPU-ms per call more"
        )
    result.notes.append(
        f"medians over {args.rounds} interleaved rounds of {args.seconds:g} s per setup (the raw best "
        "batch included); host load "
        f"{result.host.get('load1', '?')} on {result.host.get('cpus', '?')} CPUs"
    )
    print_table(result.rows, result.columns, title=result.title)
    for note in result.notes:
        print(note)
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per setup and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    parser.add_argument(
        "--lengths", nargs="+", choices=list(LENGTHS), default=list(LENGTHS), help="text lengths to run"
    )
    parser.add_argument("--skip-batching-off", action="store_true", help="leave out the batching-off rows")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
