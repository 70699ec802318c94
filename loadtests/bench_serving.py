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
from pathlib import Path
from typing import Any

import grpc
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH

from loadtests.common import BenchResult, Bind, Sender, bench_parser, closed_loop, print_table, run_bench
from loadtests.serve import Served, servable
from loadtests.texts import make_texts


def _calls(new_tokens: int) -> dict[str, tuple[str, Bind]]:
    """Per service: the method measured, and how to call it (one ~50-token text per request)."""
    from textserve.v1 import classifier_pb2 as cls
    from textserve.v1 import classifier_pb2_grpc as cls_grpc
    from textserve.v1 import embedding_pb2 as emb
    from textserve.v1 import embedding_pb2_grpc as emb_grpc
    from textserve.v1 import generation_pb2 as gen
    from textserve.v1 import generation_pb2_grpc as gen_grpc
    from textserve.v1 import tokenizer_pb2 as tok
    from textserve.v1 import tokenizer_pb2_grpc as tok_grpc

    texts = make_texts(4096, 40, seed=11)

    def text(i: int) -> str:
        return texts[i % len(texts)]

    def count(channel: grpc.aio.Channel) -> Sender:
        stub = tok_grpc.TokenizerServiceStub(channel)
        return lambda i: stub.CountTokens(tok.CountTokensRequest(texts=[text(i)]), timeout=60)

    def embed(channel: grpc.aio.Channel) -> Sender:
        stub = emb_grpc.EmbeddingServiceStub(channel)
        return lambda i: stub.Embed(emb.EmbedRequest(texts=[text(i)], skip_cache=True), timeout=60)

    def classify(channel: grpc.aio.Channel) -> Sender:
        stub = cls_grpc.ClassifierServiceStub(channel)
        return lambda i: stub.Classify(cls.ClassifyRequest(texts=[text(i)], skip_cache=True), timeout=60)

    def generate(channel: grpc.aio.Channel) -> Sender:
        stub = gen_grpc.GenerationServiceStub(channel)
        params = gen.SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        return lambda i: stub.Generate(
            gen.GenerateRequest(prompt=text(i)[:60], params=params, skip_cache=True), timeout=120
        )

    return {
        "tokenizer": ("CountTokens", count),
        "embedding": ("Embed", embed),
        "classifier": ("Classify", classify),
        "generation": ("Generate", generate),
    }


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
            "model": {
                "path": RANDOM_MODEL_PATH,
                "backend": "torch",
                "intra_op_threads": args.generation_threads,
            },
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
                # closed loop; the warm-up keeps first-seen input shapes (costly on CPU backends)
                # out of the lowest-concurrency point
                load = await closed_loop(
                    server.address(service), call, concurrency, args.seconds, warmup_s=args.warmup
                )
                stats = load.stats()
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
    parser = bench_parser(__doc__)
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
    run_bench(parser, run)


if __name__ == "__main__":
    main()
