"""Generation benchmark: continuous batching vs sequential `generate()`, in one run, one table.

The model is a GPT-2-shaped random model built offline (default 4 layers, 256 wide,
byte-level BPE tokenizer; the same shape as the demo model), written to a temporary
folder so the baseline and the service load the very same weights.
Measured:
  * baseline: transformers' `generate()` on one prompt at a time (greedy), in this process,
    with a streamer recording when each token appears (so it has TTFT and inter-token too);
  * service: a `textserve serve generation` subprocess (or --in-process), driven by asyncio
    gRPC clients holding 1, 8 and 32 concurrent GenerateStream calls.
Every request generates exactly --max-new-tokens tokens (EOS ignored), from prompts of
16-64 tokens. The baseline runs before and again after the service; ratios are aggregate
generated tokens/s against the mean of those two runs. Client and server share the
machine's cores; the ratios are what to compare.

    python -m loadtests.bench_generation                       # full run (~1 min)
    python -m loadtests.bench_generation --max-new-tokens 16 --requests-per-stream 1 \\
        --baseline-requests 2 --concurrency 1,8                # quick check
    python -m loadtests.bench_generation --json out.json       # also write the table as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import BenchResult, bench_parser, percentile, run_bench
from loadtests.serve import ServerProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_VOCABULARY = (
    "the model server answers requests from many clients at once while tokens stream back one at a time "
    "and new sequences join the running batch between two decode steps on every node of the cluster"
)


def make_prompts(count: int, seed: int = 5) -> list[str]:
    """Prompts of 12-48 words (about 16-64 tokens), different from each other."""
    rng = random.Random(seed)
    words = _VOCABULARY.split()
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(12, 48))) for i in range(count)]


def build_model(folder: Path, layers: int, hidden: int, heads: int) -> Path:
    """The benchmark model, saved as a Hugging Face model directory."""
    from textserve.runtime.random_lm import byte_level_tokenizer, demo_config, save_random_model

    tokenizer = byte_level_tokenizer()
    config = demo_config(tokenizer, layers=layers, hidden=hidden, heads=heads)
    return save_random_model(folder / "bench-gpt2", config, tokenizer, seed=1)


@dataclass
class Point:
    """One measured row of the table."""

    setup: str
    streams: int
    requests: int
    tokens: int
    seconds: float
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def measure_baseline(model_dir: Path, prompts: list[str], max_new_tokens: int, when: str) -> Point:
    """Sequential generate(), one prompt at a time, with per-token timestamps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None  # every request makes max_new_tokens tokens

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    point = Point(f"generate() seq. ({when})", 1, len(prompts), 0, 0.0)
    with torch.inference_mode():
        ids = tokenizer(prompts[0], return_tensors="pt")["input_ids"]
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        started = time.perf_counter()
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            clock = Clock()
            sent = time.perf_counter()
            output = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, streamer=clock
            )
            point.tokens += int(output.shape[1] - ids.shape[1])
            token_times = clock.times[1:]  # the first put() is the prompt
            if token_times:
                point.ttft.append(token_times[0] - sent)
                point.itl += [b - a for a, b in itertools.pairwise(token_times)]
        point.seconds = time.perf_counter() - started
    return point


def start_server(model_dir: Path, max_running: int, max_new_tokens: int, threads: int) -> ServerProcess:
    """`textserve serve generation` in a subprocess serving the benchmark model."""
    settings = {
        "TEXTSERVE_GENERATION__MODEL__PATH": str(model_dir),
        "TEXTSERVE_GENERATION__MAX_RUNNING_SEQUENCES": str(max_running),
        "TEXTSERVE_GENERATION__MODEL__INTRA_OP_THREADS": str(threads),
        "TEXTSERVE_GENERATION__MAX_NEW_TOKENS_LIMIT": str(max(max_new_tokens, 64)),
        "TEXTSERVE_GENERATION__CACHE_ENABLED": "false",
    }
    return ServerProcess(["generation"], settings, metrics=False, label="generation server")


class InProcessServer:
    """The generation service on a ServiceHost in this process (client and server share a loop)."""

    def __init__(self, model_dir: Path, max_running: int, max_new_tokens: int, threads: int) -> None:
        from textserve.core.config import ModelConfig, ServerConfig
        from textserve.generation.app import GenerationApp
        from textserve.generation.config import GenerationServiceConfig
        from textserve.transport.server import ServiceHost

        config = GenerationServiceConfig(
            server=ServerConfig(host="127.0.0.1", port=0),
            model=ModelConfig(path=str(model_dir), backend="torch", intra_op_threads=threads),
            max_running_sequences=max_running,
            max_new_tokens_limit=max(max_new_tokens, 64),
            cache_enabled=False,
        )
        self.host = ServiceHost([GenerationApp(config)])

    def address(self) -> str:
        return f"127.0.0.1:{self.host.port_of('generation')}"

    async def __aenter__(self) -> InProcessServer:
        await self.host.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.host.stop(grace=1.0)


async def drive(
    address: str, prompts: list[str], streams: int, per_stream: int, max_new_tokens: int
) -> Point:
    """`streams` clients, each sending `per_stream` GenerateStream calls back to back."""
    from textserve.v1 import generation_pb2, generation_pb2_grpc

    point = Point("service GenerateStream", streams, streams * per_stream, 0, 0.0)

    async def client(stub: Any, index: int) -> None:
        for turn in range(per_stream):
            prompt = prompts[(index * per_stream + turn) % len(prompts)]
            request = generation_pb2.GenerateRequest(
                prompt=prompt,
                params=generation_pb2.SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                skip_cache=True,
            )
            sent = last = time.perf_counter()
            first = True
            async for item in stub.GenerateStream(request, timeout=600):
                now = time.perf_counter()
                count = len(item.token_ids)
                if not count:
                    continue
                point.tokens += count
                if first:
                    point.ttft.append(now - sent)
                    first = False
                    count -= 1
                if count:
                    point.itl += [(now - last) / count] * count
                last = now

    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await client(stub, -1)  # warm-up
        point.tokens, point.ttft, point.itl = 0, [], []
        started = time.perf_counter()
        await asyncio.gather(*(client(stub, i) for i in range(streams)))
        point.seconds = time.perf_counter() - started
    return point


def render(points: list[Point], reference: float) -> str:
    header = (
        f"{'setup':<27}{'streams':>8}{'requests':>9}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}"
        f"{'x base':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}{'ITL p99':>9}"
    )
    lines = [header, "-" * len(header)]
    for point in points:
        ms = [
            percentile(values, q) * 1000
            for values, q in ((point.ttft, 50), (point.ttft, 99), (point.itl, 50), (point.itl, 99))
        ]
        lines.append(
            f"{point.setup:<27}{point.streams:>8}{point.requests:>9}{point.tokens:>8}{point.seconds:>9.2f}"
            f"{point.tokens_per_s:>10.1f}{point.tokens_per_s / reference:>7.2f}x"
            f"{ms[0]:>8.1f}ms{ms[1]:>8.1f}ms{ms[2]:>7.1f}ms{ms[3]:>7.1f}ms"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> BenchResult:
    levels = [int(x) for x in args.concurrency.split(",")]
    prompts = make_prompts(max(max(levels) * args.requests_per_stream, args.baseline_requests) + 1)
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as folder:
        model_dir = build_model(Path(folder), args.layers, args.hidden, args.heads)
        print(
            f"model: GPT-2 shaped, {args.layers} layers x {args.hidden} wide (random weights); "
            f"{args.max_new_tokens} new tokens per request",
            flush=True,
        )
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        before = measure_baseline(model_dir, prompts[: args.baseline_requests], args.max_new_tokens, "before")
        print(f"baseline: {before.tokens_per_s:.1f} tokens/s", flush=True)
        kind = InProcessServer if args.in_process else start_server
        points = [before]
        async with kind(model_dir, max(levels), args.max_new_tokens, args.threads) as server:
            for streams in levels:
                point = await drive(
                    server.address(), prompts, streams, args.requests_per_stream, args.max_new_tokens
                )
                print(f"{streams} streams: {point.tokens_per_s:.1f} tokens/s", flush=True)
                points.append(point)
        # Measured again after the service, so load that changed during the run shows up.
        after = measure_baseline(model_dir, prompts[: args.baseline_requests], args.max_new_tokens, "after")
        print(f"baseline again: {after.tokens_per_s:.1f} tokens/s", flush=True)
        points.insert(1, after)
    reference = (before.tokens_per_s + after.tokens_per_s) / 2
    print()
    print(render(points, reference))
    print(f"x base: aggregate tokens/s over the mean of the two baseline runs ({reference:.1f} tokens/s)")
    return result_of(points, reference, args)


def result_of(points: list[Point], reference: float, args: argparse.Namespace) -> BenchResult:
    """The table as a BenchResult (loadtests/common.py format), TTFT against tokens/s as a curve."""
    result = BenchResult(bench="generation", title="Generation: continuous batching vs sequential generate()")
    curve = result.curve("generation: GenerateStream (TTFT)", "tokens/s")
    for point in points:
        ttft_p50, ttft_p99 = (percentile(point.ttft, q) * 1000 for q in (50, 99))
        result.add_row(
            setup=point.setup,
            streams=point.streams,
            requests=point.requests,
            tokens=point.tokens,
            seconds=point.seconds,
            tokens_per_s=point.tokens_per_s,
            x_base=point.tokens_per_s / reference,
            ttft_p50_ms=ttft_p50,
            ttft_p99_ms=ttft_p99,
            itl_p50_ms=percentile(point.itl, 50) * 1000,
            itl_p99_ms=percentile(point.itl, 99) * 1000,
        )
        if point.setup.startswith("service"):
            curve.add(point.streams, point.tokens_per_s, ttft_p50, ttft_p99)
    result.notes.append(
        f"GPT-2 shaped random model, {args.layers} layers x {args.hidden} wide; {args.max_new_tokens} "
        f"new tokens per request; x_base against the mean of the two baseline runs ({reference:.1f} tokens/s)"
    )
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument(
        "--requests-per-stream", type=int, default=3, help="requests each stream sends in turn"
    )
    parser.add_argument("--baseline-requests", type=int, default=8, help="prompts run through generate()")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--in-process", action="store_true", help="run the service in this process")
    parser.add_argument("--json", type=Path, help="also write the result (loadtests/common.py format)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, baseline and service alike (0: torch's default; more than one "
        "thread makes the numbers swing wildly on a shared machine)",
    )
    run_bench(parser, run)


if __name__ == "__main__":
    main()
