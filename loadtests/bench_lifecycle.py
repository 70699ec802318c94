"""Shadow traffic off vs on: does mirroring every request to a shadow version slow the primary?

One `textserve serve embedding` process serves a two-version repository (a temporary
directory: version 1 the MiniLM as packaged, version 2 the same weights with CLS pooling, so
the shadow computes another model's vectors), weights {"1": 100}. Rounds alternate between
shadow off (shadow_share 0) and shadow at 100 % (shadow_version "2", shadow_share 1.0), set at
run time through ModelControl/SetRouting (same process, same warm caches: only the shadow
differs), in A B / B A order (at least 4 rounds). Each round drives Embed with one short text
per call, cache skipped, at each concurrency of --concurrency, and records the primary's
latency percentiles and throughput. The report gives the medians over rounds of each mode's p50
and throughput and the medians of the per-round ratios on/off (the issue's bound: p50 within
10 % of off). The server's textserve_shadow_requests_total says how many shadow calls ran.

`--service generation` does the same for `textserve serve generation` over two random
GPT-2-shaped causal LMs (the demo LM's shape, seeds 1 and 2: the shadow generates other tokens),
each call a greedy Generate of --max-new-tokens tokens (cache skipped); the shadow re-generates
every finished request on its own engine.

    python -m loadtests.bench_lifecycle [--service embedding|generation] [--rounds 4] [--seconds 5]
        [--concurrency 1 8] [--max-new-tokens 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtests.common import OFF_ON, BenchResult, Workload, bench_parser, closed_loop, print_table, run_bench
from loadtests.serve import ServerProcess, metric_total
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = OFF_ON
MODEL = "all-MiniLM-L6-v2"
LM = "bench-lm"


def make_repository(root: Path) -> Path:
    """`<root>/all-MiniLM-L6-v2/{1,2}/`: the packaged MiniLM's files linked in; version 2 with CLS pooling."""
    from textserve.core.config import default_model_path

    source = Path(default_model_path())
    for version, cls in (("1", False), ("2", True)):
        target = root / MODEL / version
        (target / "1_Pooling").mkdir(parents=True)
        for entry in source.iterdir():
            if entry.is_file():
                (target / entry.name).symlink_to(entry)
        pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
        if cls:
            pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
        (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return root


def make_lm_repository(root: Path) -> Path:
    """`<root>/bench-lm/{1,2}/`: the demo LM's shape with random weights of seeds 1 and 2."""
    from textserve.runtime.random_lm import byte_level_tokenizer, demo_config, save_random_model

    tokenizer = byte_level_tokenizer()
    for version, seed in (("1", 1), ("2", 2)):
        save_random_model(root / LM / version, demo_config(tokenizer), tokenizer, seed=seed)
    return root


def generate_call(prompts: list[str], max_new_tokens: int, timeout: float = 60) -> Any:
    """One greedy Generate per call, cache skipped."""
    from textserve.v1 import generation_pb2, generation_pb2_grpc

    requests = [
        generation_pb2.GenerateRequest(
            prompt=prompt,
            params=generation_pb2.SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
            skip_cache=True,
        )
        for prompt in prompts
    ]

    def bind(channel: Any) -> Any:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return lambda i: stub.Generate(requests[i % len(requests)], timeout=timeout)

    return bind


async def set_shadow(address: str, on: bool) -> None:
    import grpc
    from textserve.v1 import models_pb2, models_pb2_grpc

    request = models_pb2.SetRoutingRequest(
        weights={"1": 100}, shadow_version="2" if on else "", shadow_share=1.0 if on else 0.0
    )
    async with grpc.aio.insecure_channel(address) as channel:
        await models_pb2_grpc.ModelControlStub(channel).SetRouting(request, timeout=30)


async def run(args: argparse.Namespace) -> BenchResult:
    from loadtests.bench_embedding import embed_call

    if args.rounds < 4:
        raise SystemExit(f"--rounds must be at least 4 (got {args.rounds})")
    service = args.service
    generation = service == "generation"
    runs: dict[str, Workload] = defaultdict(Workload)
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as folder:
        section = f"TEXTSERVE_{service.upper()}__REPOSITORY__"
        if generation:
            from loadtests.bench_generation import make_prompts

            call = generate_call(make_prompts(64), args.max_new_tokens)
            repository = make_lm_repository(Path(folder))
            verb = "generate"
        else:
            call = embed_call(make_texts(512, 10))
            repository = make_repository(Path(folder))
            verb = "embed"
        env = {
            "TEXTSERVE_CACHE__BACKEND": "none",
            f"{section}PATH": str(repository),
            f"{section}VERSION_POLICY": "all",
            f"{section}WEIGHTS": '{"1": 100}',
        }
        if generation:
            env["TEXTSERVE_GENERATION__MODEL__NAME"] = LM
        async with ServerProcess([service], env, label=f"{service}, two versions") as server:
            address = server.address(service)
            for number in range(args.rounds):
                for mode in MODES if number % 2 == 0 else tuple(reversed(MODES)):
                    await set_shadow(address, mode == "on")
                    shown = []
                    for concurrency in args.concurrency:
                        load = await closed_loop(
                            address, call, concurrency, args.seconds, warmup_s=1.0, channels=4
                        )
                        stats = load.stats()
                        runs[f"{verb} c={concurrency}"].runs[mode].append(stats)
                        shown.append(f"c={concurrency}: p50 {stats.p50_ms:.2f} ms, {stats.throughput:.0f}/s")
                    print(f"round {number + 1} shadow {mode}: {', '.join(shown)}", flush=True)
            page = server.metrics()
    result = BenchResult(
        "lifecycle", "Primary latency with a shadow version at 100 % vs none (same-run ratios)"
    )
    for key, workload in runs.items():
        result.add_row(
            workload=key,
            off_p50_ms=workload.median("off", "p50_ms"),
            on_p50_ms=workload.median("on", "p50_ms"),
            p50_ratio_on_off=workload.ratio_median("p50_ms"),
            off_calls_per_s=workload.median("off", "throughput"),
            on_calls_per_s=workload.median("on", "throughput"),
            throughput_ratio_on_off=workload.ratio_median("throughput"),
            rounds=len(workload.runs["on"]),
        )
    print_table(result.rows, title="medians over rounds; ratios are medians of the per-round on/off ratios")
    compared = metric_total(page, "textserve_shadow_requests_total", 'outcome="compared"')
    skipped = metric_total(page, "textserve_shadow_requests_total", 'outcome="skipped"')
    failed = metric_total(page, "textserve_shadow_requests_total", 'outcome="failed"')
    result.notes.append(f"shadow calls: {compared:.0f} compared, {skipped:.0f} skipped, {failed:.0f} failed")
    for note in result.notes:
        print(f"note: {note}")
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds of off and on, order alternating (>= 4)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per workload")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrent callers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--service", choices=("embedding", "generation"), default="embedding")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation: tokens per call")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
