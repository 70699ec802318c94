"""Generation benchmark: continuous batching vs sequential `generate()`, in one run, one table.

The model is a GPT-2-shaped random model built offline (default 4 layers, 256 wide,
byte-level BPE tokenizer; the same shape as the demo model), written to a temporary
folder so the baseline and the service load the very same weights.
Measured in interleaved rounds (A B A B: every round runs every setup once, so load that
changes during the run hits all of them), reported as medians over the rounds and as
same-round ratios (their median):
  * baseline: transformers' `generate()` on one prompt at a time (greedy), in a process of
    its own (no gRPC thread competes with it), with a streamer recording when each token
    appears (so it has TTFT and inter-token too);
  * service: a `textserve serve generation` subprocess (its engine in a process of its own, the
    default; or --in-process), driven by asyncio gRPC clients holding 1, 8 and 32 concurrent
    GenerateStream calls (ratio: tokens/s over the same round's baseline); with
    --compare-thread, the same rows from a second server whose engine runs in a thread of
    the server (engine_process=false), in the same rounds;
  * prefix hit: one prompt of a --prefix-tokens long prefix (new each round) sent twice;
    the second's time to first token over the first's (prefix reuse), outputs compared;
  * burst: --burst-running streams decoding, then --burst-new new prompts arriving at
    once; the running streams' inter-token p99 over their p50 (chunked prefill), as the
    clients see it and, with --in-process, as the engine produces it (the time of each
    step's events, so gRPC and event-loop delays are left out).
Every request generates exactly --max-new-tokens tokens (EOS ignored), from prompts of
16-64 tokens. Client and server share the machine's cores; the ratios are what to compare.

    python -m loadtests.bench_generation                       # full run (~3-5 min)
    python -m loadtests.bench_generation --rounds 1 --max-new-tokens 16 --requests-per-stream 1 \\
        --baseline-requests 2 --concurrency 1,8                # quick check
    python -m loadtests.bench_generation --json out.json       # also write the table as JSON
    python -m loadtests.bench_generation --compare-thread      # engine process vs engine thread
    python -m loadtests.bench_generation --in-process --only burst --rounds 5   # burst ITL only
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import BenchResult, bench_parser, format_table, percentile, run_bench
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


class Baseline:
    """transformers' `generate()` on the benchmark model, loaded once, in this process."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        self.model.generation_config.eos_token_id = None  # every request makes max_new_tokens tokens

    def measure(self, prompts: list[str], max_new_tokens: int) -> Point:
        """Sequential generate(), one prompt at a time, with per-token timestamps."""
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        model, tokenizer = self.model, self.tokenizer
        point = Point("generate() sequential", 1, len(prompts), 0, 0.0)
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


def start_server(
    model_dir: Path,
    max_running: int,
    max_new_tokens: int,
    threads: int,
    batched: int,
    engine_process: bool = True,
) -> ServerProcess:
    """`textserve serve generation` in a subprocess serving the benchmark model (its engine in a
    process of its own, the default, or in a thread of the server)."""
    settings = {
        "TEXTSERVE_GENERATION__ENGINE_PROCESS": str(engine_process).lower(),
        "TEXTSERVE_GENERATION__MAX_BATCHED_TOKENS": str(batched),
        "TEXTSERVE_GENERATION__MODEL__PATH": str(model_dir),
        "TEXTSERVE_GENERATION__MAX_RUNNING_SEQUENCES": str(max_running),
        "TEXTSERVE_GENERATION__MODEL__INTRA_OP_THREADS": str(threads),
        "TEXTSERVE_GENERATION__MAX_NEW_TOKENS_LIMIT": str(max(max_new_tokens, 64)),
        "TEXTSERVE_GENERATION__CACHE_ENABLED": "false",
    }
    label = "generation server" if engine_process else "generation server (engine thread)"
    return ServerProcess(["generation"], settings, metrics=False, label=label)


class InProcessServer:
    """The generation service on a ServiceHost in this process (client and server share a loop)."""

    def __init__(
        self, model_dir: Path, max_running: int, max_new_tokens: int, threads: int, batched: int
    ) -> None:
        from textserve.core.config import ModelConfig, ServerConfig
        from textserve.generation.app import GenerationApp
        from textserve.generation.config import GenerationServiceConfig
        from textserve.transport.server import ServiceHost

        config = GenerationServiceConfig(
            server=ServerConfig(host="127.0.0.1", port=0),
            model=ModelConfig(path=str(model_dir), backend="torch", intra_op_threads=threads),
            max_running_sequences=max_running,
            max_new_tokens_limit=max(max_new_tokens, 64),
            max_batched_tokens=batched,
            cache_enabled=False,
            engine_process=False,  # the probe looks inside the engine: it must be in this process
        )
        self.app = GenerationApp(config)
        self.host = ServiceHost([self.app])
        self.probe = EngineProbe()

    def address(self) -> str:
        return f"127.0.0.1:{self.host.port_of('generation')}"

    async def __aenter__(self) -> InProcessServer:
        await self.host.start()
        from textserve.generation.async_engine import AsyncEngine

        engine = self.app.service.primary.engine  # the primary version's engine, in a thread here
        assert isinstance(engine, AsyncEngine)
        self.probe.attach(engine.engine)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.host.stop(grace=1.0)


class EngineProbe:
    """Server-side token times: when the engine hands each step's events over (in-process only)."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.engine: Any = None

    def attach(self, engine: Any) -> None:
        self.engine = engine
        sink = engine.on_events

        def record(events: list[Any]) -> None:
            now = time.perf_counter()
            for event in events:
                if event.token_ids:
                    self.times.setdefault(event.seq_id, []).append(now)
            sink(events)

        engine.on_events = record

    def itl_of_running(self, before: float) -> list[float]:
        """Inter-token gaps of the sequences that had a token before `before`; forgets all."""
        times, self.times = self.times, {}
        return [
            b - a for stamps in times.values() if stamps[0] < before for a, b in itertools.pairwise(stamps)
        ]


_BASELINE: Baseline | None = None


def _load_baseline(model_dir: Path, threads: int) -> None:
    global _BASELINE
    if threads:
        import torch

        torch.set_num_threads(threads)
    _BASELINE = Baseline(model_dir)


def _measure_baseline(prompts: list[str], max_new_tokens: int) -> Point:
    assert _BASELINE is not None
    return _BASELINE.measure(prompts, max_new_tokens)


def baseline_process(model_dir: Path, threads: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process of its own for generate() (loaded once): no gRPC thread of this process's
    client competes with it for the interpreter lock."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_load_baseline,
        initargs=(model_dir, threads),
    )


def _request(prompt: str, max_new_tokens: int) -> Any:
    from textserve.v1 import generation_pb2

    return generation_pb2.GenerateRequest(
        prompt=prompt,
        params=generation_pb2.SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
        skip_cache=True,
    )


async def stream_one(stub: Any, prompt: str, max_new_tokens: int, into: Point) -> list[int]:
    """One GenerateStream call; its tokens, TTFT and inter-token gaps go into `into`."""
    sent = last = time.perf_counter()
    first = True
    ids: list[int] = []
    async for item in stub.GenerateStream(_request(prompt, max_new_tokens), timeout=600):
        now = time.perf_counter()
        count = len(item.token_ids)
        if not count:
            continue
        ids += item.token_ids
        into.tokens += count
        if first:
            into.ttft.append(now - sent)
            first = False
            count -= 1
        if count:  # tokens that came in one message share the gap evenly
            into.itl += [(now - last) / count] * count
        last = now
    return ids


async def drive(stub: Any, prompts: list[str], streams: int, per_stream: int, max_new_tokens: int) -> Point:
    """`streams` clients, each sending `per_stream` GenerateStream calls back to back."""
    point = Point("service GenerateStream", streams, streams * per_stream, 0, 0.0)

    async def client(index: int) -> None:
        for turn in range(per_stream):
            await stream_one(stub, prompts[(index * per_stream + turn) % len(prompts)], max_new_tokens, point)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(streams)))
    point.seconds = time.perf_counter() - started
    return point


async def prefix_pair(stub: Any, prefix: str, max_new_tokens: int) -> tuple[Point, Point, bool]:
    """The same long-prefix prompt twice, one after the other: (first, second, same output)."""
    first, second = (Point(f"prefix {which}", 1, 1, 0, 0.0) for which in ("cold", "hit"))
    prompt = prefix + " Now answer:"
    started = time.perf_counter()
    a = await stream_one(stub, prompt, max_new_tokens, first)
    first.seconds = time.perf_counter() - started
    started = time.perf_counter()
    b = await stream_one(stub, prompt, max_new_tokens, second)
    second.seconds = time.perf_counter() - started
    return first, second, a == b


async def burst(
    stub: Any, running: list[str], new: list[str], max_new_tokens: int, settle_tokens: int = 4
) -> tuple[Point, Point, float]:
    """`running` streams decoding; once each has `settle_tokens` tokens, the `new` prompts
    arrive at once. Returns (the running streams, the new ones, when the new ones were sent)."""
    streams = Point("burst: running streams", len(running), len(running), 0, 0.0)
    joined = Point("burst: new prompts", len(new), len(new), 0, 0.0)
    settled = asyncio.Event()
    counts = [0] * len(running)

    async def runner(index: int) -> None:
        last = time.perf_counter()
        async for item in stub.GenerateStream(_request(running[index], max_new_tokens), timeout=600):
            now = time.perf_counter()
            count = len(item.token_ids)
            if not count:
                continue
            streams.tokens += count
            if counts[index]:  # inter-token gaps of running streams only (not the first token)
                streams.itl += [(now - last) / count] * count
            counts[index] += count
            last = now
            if min(counts) >= settle_tokens:
                settled.set()

    sent = 0.0

    async def newcomers() -> None:
        nonlocal sent
        await settled.wait()
        sent = time.perf_counter()
        await asyncio.gather(*(stream_one(stub, prompt, max_new_tokens, joined) for prompt in new))

    started = time.perf_counter()
    await asyncio.gather(*(runner(i) for i in range(len(running))), newcomers())
    streams.seconds = joined.seconds = time.perf_counter() - started
    return streams, joined, sent


def long_prefix(tokenizer: Any, tokens: int, seed: int) -> str:
    """Text of about `tokens` tokens, different for every seed."""
    rng = random.Random(seed)
    words = _VOCABULARY.split()
    text = f"{seed}:"
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += " " + rng.choice(words)
    return text


_RATIO_NOTE = (
    "ratio (median of the same-round ratios): service rows, tokens/s over generate()'s; prefix hit, "
    "its TTFT over the cold one's; burst running streams, their inter-token p99 over p50 (client side; "
    "'engine' rows: at the engine, --in-process only)"
)


@dataclass
class Rounds:
    """Every round's points by setup, and the same-round ratios."""

    points: dict[str, list[Point]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, point: Point) -> None:
        self.points.setdefault(key, []).append(point)

    def ratio(self, key: str, value: float) -> None:
        self.ratios.setdefault(key, []).append(value)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(rounds: Rounds) -> list[dict[str, Any]]:
    """One row per setup: medians over the rounds."""
    rows = []
    for key, points in rounds.points.items():
        first = points[0]
        rows.append(
            {
                "setup": first.setup,
                "streams": first.streams,
                "requests": first.requests,
                "tokens_per_s": median([p.tokens_per_s for p in points]),
                "ratio": median(rounds.ratios.get(key, [])),
                "ttft_p50_ms": median([percentile(p.ttft, 50) * 1000 for p in points]),
                "ttft_p99_ms": median([percentile(p.ttft, 99) * 1000 for p in points]),
                "itl_p50_ms": median([percentile(p.itl, 50) * 1000 for p in points]),
                "itl_p99_ms": median([percentile(p.itl, 99) * 1000 for p in points]),
            }
        )
    return rows


async def run(args: argparse.Namespace) -> BenchResult:
    from textserve.v1 import generation_pb2_grpc
    from tqdm import tqdm

    levels = [int(x) for x in args.concurrency.split(",")]
    prompts = make_prompts(max(max(levels) * args.requests_per_stream, args.baseline_requests) + 1)
    burst_prompts = make_prompts(args.burst_running + args.burst_new, seed=11)
    rounds = Rounds()
    same_output = True
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as folder:
        model_dir = build_model(Path(folder), args.layers, args.hidden, args.heads)
        print(
            f"model: GPT-2 shaped, {args.layers} layers x {args.hidden} wide (random weights); "
            f"{args.max_new_tokens} new tokens per request; {args.rounds} interleaved rounds",
            flush=True,
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        kind = InProcessServer if args.in_process else start_server
        most = max(*levels, args.burst_running + args.burst_new)
        longest = max(args.max_new_tokens, args.burst_max_new_tokens)
        with baseline_process(model_dir, args.threads) as baseline:
            async with contextlib.AsyncExitStack() as stack:
                server: InProcessServer | ServerProcess = await stack.enter_async_context(
                    kind(model_dir, most, longest, args.threads, args.max_batched_tokens)
                )
                channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.address()))
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                probe: EngineProbe | None = getattr(server, "probe", None)
                await stream_one(stub, prompts[-1], 4, Point("warm-up", 1, 1, 0, 0.0))
                thread_stub = None
                if args.compare_thread and not args.in_process:
                    other = await stack.enter_async_context(
                        start_server(model_dir, most, longest, args.threads, args.max_batched_tokens, False)
                    )
                    other_channel = await stack.enter_async_context(
                        grpc.aio.insecure_channel(other.address())
                    )
                    thread_stub = generation_pb2_grpc.GenerationServiceStub(other_channel)
                for warm in (stub, thread_stub):  # untimed: buffers grown, threads started, code paths hot
                    if warm is not None and args.only in ("all", "streams-ab"):
                        await drive(warm, prompts, max(levels), 1, args.max_new_tokens)
                for index in tqdm(range(args.rounds), desc="rounds", unit="round"):
                    if args.only == "burst":
                        await burst_round(stub, burst_prompts, args, rounds, probe)
                        if thread_stub is not None:
                            await burst_round(thread_stub, burst_prompts, args, rounds, None, _THREAD)
                        continue
                    if args.only == "burst-ab":
                        await burst_ab_round(stub, burst_prompts, args, rounds, probe)
                        continue
                    base = baseline.submit(
                        _measure_baseline, prompts[: args.baseline_requests], args.max_new_tokens
                    ).result()
                    rounds.add("base", base)
                    for streams in levels:

                        async def stream_row(
                            on: Any, suffix: str = "", streams: int = streams, base: Point = base
                        ) -> None:
                            point = await drive(
                                on, prompts, streams, args.requests_per_stream, args.max_new_tokens
                            )
                            point.setup += suffix
                            rounds.add(f"service {streams}{suffix}", point)
                            rounds.ratio(f"service {streams}{suffix}", point.tokens_per_s / base.tokens_per_s)

                        if args.only == "streams-ab":  # token budget only, then with the time share
                            with _time_share_off(probe):
                                await stream_row(stub, _NO_TIME_SHARE)
                        await stream_row(stub)
                        if thread_stub is not None:  # the same load on the engine in a thread
                            await stream_row(thread_stub, _THREAD)
                    if args.only == "streams-ab":
                        continue
                    prefix = long_prefix(tokenizer, args.prefix_tokens, seed=1000 + index)
                    cold, hit, same = await prefix_pair(stub, prefix, args.max_new_tokens)
                    same_output = same_output and same
                    rounds.add("prefix cold", cold)
                    rounds.add("prefix hit", hit)
                    rounds.ratio("prefix hit", hit.ttft[0] / cold.ttft[0])
                    await burst_round(stub, burst_prompts, args, rounds, probe)
                    if thread_stub is not None:
                        await burst_round(thread_stub, burst_prompts, args, rounds, None, _THREAD)
    rows = render(rounds)
    print()
    print(format_table(rows))
    print(_RATIO_NOTE)
    checks = [
        ("1 stream / generate() tokens/s", "service 1", 0.9, ">="),
        ("32 streams / generate() tokens/s", "service 32", 6.0, ">="),
        (f"32 streams / generate() tokens/s{_NO_TIME_SHARE}", f"service 32{_NO_TIME_SHARE}", 6.0, ">="),
        (f"1 stream / generate() tokens/s{_NO_TIME_SHARE}", f"service 1{_NO_TIME_SHARE}", 0.9, ">="),
        (f"1 stream / generate() tokens/s{_THREAD}", f"service 1{_THREAD}", 0.9, ">="),
        (f"32 streams / generate() tokens/s{_THREAD}", f"service 32{_THREAD}", 6.0, ">="),
        ("prefix hit TTFT / cold TTFT", "prefix hit", 0.5, "<="),
        ("burst: running streams' ITL p99 / p50", "burst running", 2.0, "<="),
        (f"burst: running streams' ITL p99 / p50{_THREAD}", f"burst running{_THREAD}", 2.0, "<="),
        ("burst: running streams' ITL p99 / p50 at the engine", "burst engine", 2.0, "<="),
        (f"burst: ITL p99 / p50{_NO_TIME_SHARE}", "burst running" + _NO_TIME_SHARE, 2.0, "<="),
        (f"burst: ITL p99 / p50 at the engine{_NO_TIME_SHARE}", "burst engine" + _NO_TIME_SHARE, 2.0, "<="),
    ]
    result = BenchResult(bench="generation", title="Generation: continuous batching vs sequential generate()")
    for row in rows:
        result.add_row(**row)
    print(f"\nsame-round ratios (median of {args.rounds} rounds):")
    for label, key, target, sense in checks:
        values = rounds.ratios.get(key)
        if not values:
            continue
        value = median(values)
        ok = value >= target if sense == ">=" else value <= target
        line = (
            f"{label}: {value:.2f} (target {sense} {target}; rounds: {', '.join(f'{v:.2f}' for v in values)})"
        )
        print(f"  {'PASS' if ok else 'MISS'} {line}")
        result.notes.append(line)
    print(f"  prefix hit output identical to the cold one: {same_output}")
    result.notes.append(f"prefix hit output identical to the cold one: {same_output}")
    curve = result.curve("generation: GenerateStream (TTFT)", "tokens/s")
    for row in rows:
        if row["setup"].startswith("service"):
            curve.add(row["streams"], row["tokens_per_s"], row["ttft_p50_ms"], row["ttft_p99_ms"])
    result.notes.append(_RATIO_NOTE)
    result.notes.append(
        f"GPT-2 shaped random model, {args.layers} layers x {args.hidden} wide; {args.max_new_tokens} new "
        f"tokens per request; max_batched_tokens={args.max_batched_tokens}; medians of {args.rounds} rounds"
    )
    return result


async def burst_round(
    stub: Any,
    prompts: list[str],
    args: argparse.Namespace,
    rounds: Rounds,
    probe: EngineProbe | None,
    suffix: str = "",
) -> None:
    """One burst run, its points and ratios added to `rounds` (the engine's too with a probe)."""
    if probe is not None:
        probe.times.clear()
    running, joined, sent = await burst(
        stub, prompts[: args.burst_running], prompts[args.burst_running :], args.burst_max_new_tokens
    )
    for point in (running, joined):
        point.setup += suffix
    rounds.add("burst running" + suffix, running)
    rounds.add("burst new" + suffix, joined)
    rounds.ratio("burst running" + suffix, percentile(running.itl, 99) / percentile(running.itl, 50))
    if probe is not None:
        engine = Point(
            "burst: running streams (engine)" + suffix, args.burst_running, args.burst_running, 0, 0.0
        )
        engine.itl = probe.itl_of_running(sent)
        rounds.add("burst engine" + suffix, engine)
        rounds.ratio("burst engine" + suffix, percentile(engine.itl, 99) / percentile(engine.itl, 50))


_NO_TIME_SHARE = " [token budget only]"
_THREAD = " [engine thread]"


async def burst_ab_round(
    stub: Any, prompts: list[str], args: argparse.Namespace, rounds: Rounds, probe: EngineProbe | None
) -> None:
    """A burst run with the engine's prefill sized by the token budget alone, then one with
    its time share too (the default): A B in every round (--in-process only)."""
    with _time_share_off(probe):
        await burst_round(stub, prompts, args, rounds, probe, _NO_TIME_SHARE)
    await burst_round(stub, prompts, args, rounds, probe)


@contextlib.contextmanager
def _time_share_off(probe: EngineProbe | None) -> Iterator[None]:
    """The engine's prefill sized by max_batched_tokens alone while inside (--in-process only)."""
    if probe is None or probe.engine is None:
        raise SystemExit("the -ab runs need --in-process")
    pacer = probe.engine.pacer
    share, pacer.share = pacer.share, None
    try:
        yield
    finally:
        pacer.share = share


def main() -> None:
    from textserve.generation.config import GenerationServiceConfig

    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument(
        "--requests-per-stream", type=int, default=3, help="requests each stream sends in turn"
    )
    parser.add_argument("--baseline-requests", type=int, default=8, help="prompts run through generate()")
    parser.add_argument("--prefix-tokens", type=int, default=256, help="shared prefix of the prefix-hit pair")
    parser.add_argument("--burst-running", type=int, default=16, help="streams decoding when the burst comes")
    parser.add_argument("--burst-new", type=int, default=16, help="new prompts arriving at once")
    parser.add_argument("--burst-max-new-tokens", type=int, default=128, help="tokens per burst-run request")
    parser.add_argument(
        "--max-batched-tokens",
        type=int,
        default=GenerationServiceConfig.model_fields["max_batched_tokens"].default,
        help="the service's per-step token budget (chunked prefill)",
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the service in this process (its engine in a thread: the burst probe looks inside it)",
    )
    parser.add_argument(
        "--compare-thread",
        action="store_true",
        help="also serve the stream and burst rows from a server whose engine runs in a thread "
        "(engine_process=false), measured in the same rounds",
    )
    parser.add_argument(
        "--only",
        choices=["all", "burst", "burst-ab", "streams-ab"],
        default="all",
        help="burst: only the burst run; burst-ab: only the burst run, with the engine's prefill "
        "sized by max_batched_tokens alone and with its time share too, in every round (--in-process); "
        "streams-ab: the same A B for the stream-count rows",
    )
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
