"""Serving benchmark: latency against throughput for every service over gRPC, one run, one table.

One `textserve serve <services>` process (every service present, response cache off),
driven by closed-loop asyncio gRPC clients in this process at increasing concurrency, one
service at a time (the others stay idle):
  * tokenizer  CountTokens, one ~50-token text per request;
  * embedding  Embed, one ~50-token text;
  * classifier Classify (zero-shot, vectors from the embedding service in the same process);
  * generation Generate, a short prompt, --new-tokens tokens (ignore_eos).
For each point: requests/s, p50/p99 latency, errors, and throughput as a ratio of the
concurrency-1 throughput (how much batching and concurrency buy). These are the curves
`make bench` plots. Client and server share the machine, so absolute numbers are lower
than with a separate client.

    python -m loadtests.bench_serving [--seconds 4] [--concurrency 1 4 16 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import BenchResult, LatencyStats, print_table
from loadtests.serve import Served, servable
from loadtests.texts import make_texts

Call = Callable[[grpc.aio.Channel, int], Awaitable[Any]]


def _calls(new_tokens: int) -> dict[str, tuple[str, Call]]:
    from textserve.v1 import (
        classifier_pb2,
        classifier_pb2_grpc,
        embedding_pb2,
        embedding_pb2_grpc,
        generation_pb2,
        generation_pb2_grpc,
        tokenizer_pb2,
        tokenizer_pb2_grpc,
    )

    texts = make_texts(4096, 40, seed=11)

    async def count(channel: grpc.aio.Channel, i: int) -> Any:
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        return await stub.CountTokens(
            tokenizer_pb2.CountTokensRequest(texts=[texts[i % len(texts)]]), timeout=60
        )

    async def embed(channel: grpc.aio.Channel, i: int) -> Any:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        request = embedding_pb2.EmbedRequest(texts=[texts[i % len(texts)]], skip_cache=True)
        return await stub.Embed(request, timeout=60)

    async def classify(channel: grpc.aio.Channel, i: int) -> Any:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        request = classifier_pb2.ClassifyRequest(texts=[texts[i % len(texts)]], skip_cache=True)
        return await stub.Classify(request, timeout=60)

    async def generate(channel: grpc.aio.Channel, i: int) -> Any:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        params = generation_pb2.SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        request = generation_pb2.GenerateRequest(
            prompt=texts[i % len(texts)][:60], params=params, skip_cache=True
        )
        return await stub.Generate(request, timeout=120)

    return {
        "tokenizer": ("CountTokens", count),
        "embedding": ("Embed", embed),
        "classifier": ("Classify", classify),
        "generation": ("Generate", generate),
    }


async def _measure(address: str, call: Call, concurrency: int, seconds: float, warmup: float) -> LatencyStats:
    """Closed loop: `concurrency` callers, each sending its next request when the last returns.

    The first `warmup` seconds run the same load unmeasured (first-seen input shapes cost
    extra on CPU backends, and would otherwise land in the lowest-concurrency point).
    """
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    async with grpc.aio.insecure_channel(address) as channel:

        async def caller(stop_at: float, measured: bool) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await call(channel, next(counter))
                except grpc.aio.AioRpcError:
                    errors += measured
                    continue
                if measured:
                    latencies.append(time.perf_counter() - started)

        warm_until = time.perf_counter() + warmup
        await asyncio.gather(*(caller(warm_until, False) for _ in range(concurrency)))
        began = time.perf_counter()
        await asyncio.gather(*(caller(began + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return LatencyStats.of(latencies, elapsed, errors=errors)


async def run(args: argparse.Namespace) -> BenchResult:
    services = servable()
    calls = _calls(args.new_tokens)
    result = BenchResult(
        bench="serving", title="Serving: latency against throughput, every service over gRPC"
    )
    settings: dict[str, Any] = {"cache": {"backend": "none"}}
    if "generation" in services:
        settings["generation"] = {
            "max_new_tokens_limit": args.new_tokens,
            "max_new_tokens_default": args.new_tokens,
            "max_running_sequences": 64,
            "model": {"path": "", "backend": "torch", "intra_op_threads": args.generation_threads},
        }
    server = Served(services, settings)
    print(f"starting textserve serve {' '.join(services)} ...", flush=True)
    await asyncio.to_thread(server.start)
    try:
        for service in services:
            method, call = calls[service]
            levels = [
                c for c in args.concurrency if service != "generation" or c <= args.max_generation_concurrency
            ]
            rows = []
            curve = result.curve(f"{service}: {method}")
            for concurrency in levels:
                stats = await _measure(server.address(service), call, concurrency, args.seconds, args.warmup)
                rows.append(
                    result.add_row(
                        service=service,
                        method=method,
                        concurrency=concurrency,
                        requests_per_s=stats.throughput,
                        p50_ms=stats.p50_ms,
                        p99_ms=stats.p99_ms,
                        errors=stats.errors,
                    )
                )
                curve.add(concurrency, stats.throughput, stats.p50_ms, stats.p99_ms)
                print(
                    f"{service:10s} c={concurrency:<3d} {stats.throughput:8.1f} req/s  "
                    f"p50 {stats.p50_ms:7.1f} ms  p99 {stats.p99_ms:7.1f} ms  errors {stats.errors}",
                    flush=True,
                )
            result.add_ratio(rows, "requests_per_s", rows[0]["requests_per_s"], name="x_vs_c1")
        errors = server.error_counts()
    finally:
        code = await asyncio.to_thread(server.stop)
    result.notes.append(f"services: {', '.join(services)}; {args.seconds:g} s per point; response cache off")
    if "generation" in services:
        result.notes.append(
            f"generation: {args.new_tokens} new tokens per request, the random demo model, "
            f"intra_op_threads={args.generation_threads}"
        )
    result.notes.append(f"server-side non-OK responses: {errors or 'none'}; drain exit code {code}")
    print_table(result.rows, result.columns, title=result.title)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-generation-concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per Generate")
    parser.add_argument(
        "--generation-threads",
        type=int,
        default=1,
        help="torch intra-op threads of generation (0: torch's default, one per core; on a shared or "
        "CPU-limited machine that spins and stalls: seconds-long latency spikes)",
    )
    parser.add_argument("--json", type=Path, help="also write the result (loadtests/common.py format)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        result.write(args.json)


if __name__ == "__main__":
    main()
