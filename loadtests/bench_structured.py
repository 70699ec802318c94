"""Structured-output benchmark: constrained (JSON Schema) vs unconstrained tokens/s at 8 streams.

One `textserve serve generation` subprocess serving the GPT-2-shaped random benchmark model
(loadtests/bench_generation.py builds it). Rounds alternate A B A B: in each, `--streams`
clients send `--requests-per-stream` GenerateStream calls back to back, greedy, every request
generating exactly `--max-new-tokens` tokens. The constrained arm asks for JSON under a schema
whose shortest valid document is longer than the token budget (an object with a bounded
string and at least 200 integers), so its sequences run the whole budget too, under a token
mask at every step (xgrammar, one bitmask per step for the constrained rows). Reported: the
median tokens/s of each arm, and the median of the per-round ratios constrained/unconstrained
(target >= 0.6x).

    python -m loadtests.bench_structured                    # ~2 min
    python -m loadtests.bench_structured --rounds 2 --max-new-tokens 32   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from textserve.generation.config import GenerationServiceConfig
from tqdm import tqdm

from loadtests.bench_generation import build_model, make_prompts, start_server
from loadtests.common import BenchResult, bench_parser, run_bench

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "scores": {"type": "array", "items": {"type": "integer"}, "minItems": 200},
    },
    "required": ["title", "scores"],
}
"""No document under it fits in the benchmark's token budget, so constrained sequences never end early."""


async def drive(
    address: str, prompts: list[str], streams: int, per_stream: int, max_new_tokens: int, constrained: bool
) -> tuple[int, float]:
    """Closed loop of `streams` clients; returns (tokens generated, seconds)."""
    from textserve.v1 import generation_pb2, generation_pb2_grpc

    fmt = (
        generation_pb2.ResponseFormat(
            type=generation_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(SCHEMA)
        )
        if constrained
        else None
    )
    tokens = 0

    async def client(stub: Any, index: int) -> None:
        nonlocal tokens
        for turn in range(per_stream):
            request = generation_pb2.GenerateRequest(
                prompt=prompts[(index * per_stream + turn) % len(prompts)],
                params=generation_pb2.SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                skip_cache=True,
                response_format=fmt,
            )
            async for item in stub.GenerateStream(request, timeout=600):
                tokens += len(item.token_ids)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await client(stub, -1)  # warm-up (and the schema's one compilation)
        tokens = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(stub, i) for i in range(streams)))
        return tokens, time.perf_counter() - started


async def run(args: argparse.Namespace) -> BenchResult:
    prompts = make_prompts(args.streams * args.requests_per_stream + 1)
    rates: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as folder:
        model_dir = build_model(Path(folder), args.layers, args.hidden, args.heads)
        async with start_server(
            model_dir, args.streams, args.max_new_tokens, args.threads, args.max_batched_tokens
        ) as server:
            address = server.address()
            for _ in tqdm(range(args.rounds), desc="rounds (A: unconstrained, B: constrained)"):
                round_rates = {}
                for arm in ("unconstrained", "constrained"):
                    tokens, seconds = await drive(
                        address,
                        prompts,
                        args.streams,
                        args.requests_per_stream,
                        args.max_new_tokens,
                        arm == "constrained",
                    )
                    expected = args.streams * args.requests_per_stream * args.max_new_tokens
                    if tokens != expected:
                        raise RuntimeError(f"{arm}: {tokens} tokens generated, expected {expected}")
                    round_rates[arm] = tokens / seconds
                    rates[arm].append(round_rates[arm])
                ratios.append(round_rates["constrained"] / round_rates["unconstrained"])
    result = BenchResult(bench="structured", title="Structured output: constrained vs unconstrained tokens/s")
    free = statistics.median(rates["unconstrained"])
    for arm, values in rates.items():
        result.add_row(
            setup=arm,
            streams=args.streams,
            rounds=args.rounds,
            tokens_per_s=statistics.median(values),
            x_unconstrained=statistics.median(values) / free,
        )
    ratio = statistics.median(ratios)
    result.notes.append(
        f"median of {args.rounds} interleaved rounds; per-round ratio constrained/unconstrained: median "
        f"{ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); target >= 0.6x; GPT-2 shaped "
        f"random model {args.layers}x{args.hidden}, greedy, {args.max_new_tokens} tokens per request"
    )
    print()
    print(f"{'setup':<16}{'tokens/s (median)':>20}{'x unconstrained':>18}")
    for arm, values in rates.items():
        print(f"{arm:<16}{statistics.median(values):>20.1f}{statistics.median(values) / free:>17.2f}x")
    print(result.notes[-1])
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--streams", type=int, default=8, help="concurrent GenerateStream clients")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per arm")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the server")
    parser.add_argument(
        "--max-batched-tokens",
        type=int,
        default=GenerationServiceConfig.model_fields["max_batched_tokens"].default,
        help="the service's per-step token budget",
    )
    parser.add_argument("--json", type=Path, help="also write the result (loadtests/common.py format)")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
