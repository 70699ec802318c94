"""Tuned batch budget vs fixed max_batch_size on a mixed workload, in one run, one table.

The workload: a third each of short (~12 tokens), medium (~50) and long (~240) texts,
`--concurrency` callers (default 64) each sending one text per request back to back.
Measured in this same run:
  * the raw model (no server): texts/s of each length class at each batch size; its
    best per class gives the raw best on the mix, 3 / sum(1 / best_class);
  * the tuner (`textserve tune`, default settings, nothing told about the workload);
  * the service (`textserve serve embedding` subprocesses, cache off) with the tuned
    budget file, and with each fixed max_batch_size in --sizes (max_batch_tokens default).
All services run at once and are driven in --rounds rounds, each visiting every service
for --seconds in a rotated order, so drifting machine load spreads over all of them;
the raw model is measured between rounds. Results are the median over rounds.

    python -m loadtests.bench_tuning                                  # full run (~5 min)
    python -m loadtests.bench_tuning --rounds 1 --seconds 3 --tune-seconds 8   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from loadtests.bench_embedding import embed_call
from loadtests.common import bench_parser, closed_loop
from loadtests.serve import ServerProcess, metric_total
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASSES = {"short": 12, "medium": 50, "long": 240}
"""Length classes of the mix and their target tokens per text."""
RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)
TEXTS_PER_CLASS = 96
SETTINGS = {"TEXTSERVE_CACHE__BACKEND": "none", "TEXTSERVE_EMBEDDING__CACHE_ENABLED": "false"}
"""Every service of the benchmark: response cache off."""


def class_texts(tokenizer: Any) -> dict[str, list[str]]:
    """TEXTS_PER_CLASS distinct texts per class, each within 10% of the class's token target."""
    result: dict[str, list[str]] = {}
    for name, target in CLASSES.items():
        words = max(2, int(target / 1.2))
        for _ in range(40):
            texts = make_texts(TEXTS_PER_CLASS, words, seed=target)
            mean = statistics.mean(len(e.ids) for e in tokenizer.encode_many(texts))
            if abs(mean - target) <= 0.1 * target:
                break
            words = max(2, round(words * target / mean))
        result[name] = texts
    return result


def measure_raw(
    model: Any, ids: dict[str, list[list[int]]], seconds_per_point: float
) -> dict[str, dict[int, float]]:
    """Texts/s of each class at each raw batch size (tokenization excluded)."""
    rates: dict[str, dict[int, float]] = {}
    for name, rows in ids.items():
        rates[name] = {}
        for size in RAW_BATCHES:
            model.run_batch(rows[:size])
            done, cursor, started = 0, 0, time.perf_counter()
            while time.perf_counter() - started < seconds_per_point or done < 3 * size:
                model.run_batch([rows[(cursor + j) % len(rows)] for j in range(size)])
                cursor += size
                done += size
            rates[name][size] = done / (time.perf_counter() - started)
    return rates


async def budget(server: ServerProcess) -> tuple[int, int, str]:
    """The budget the service reports in Info: (max_batch_size, max_batch_tokens, source)."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    async with grpc.aio.insecure_channel(server.address()) as channel:
        info = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Info(
            embedding_pb2.InfoRequest(), timeout=10
        )
    budget = info.batch_budget
    return budget.max_batch_size, budget.max_batch_tokens, budget.source


COUNTERS = {
    "busy_s": "textserve_inference_duration_seconds_sum",
    "batches": "textserve_batch_size_count",
    "texts": "textserve_batch_size_sum",
}


def counters(server: ServerProcess) -> dict[str, float]:
    """Model busy seconds, batches and batched texts so far, from the service's /metrics."""
    text = server.metrics()
    return {key: metric_total(text, name, 'service="embedding"') for key, name in COUNTERS.items()}


async def drive(
    server: ServerProcess, texts: list[str], concurrency: int, seconds: float
) -> dict[str, float]:
    """Closed loop of `concurrency` callers, one text per request, after a short warm-up.

    Returns completed texts per second, the share of the time the model was running a batch
    (`busy`), and the mean texts per batch.
    """
    seen: list[dict[str, float]] = []

    async def read_counters() -> None:
        seen.append(await asyncio.to_thread(counters, server))

    run = await closed_loop(
        server.address(),
        embed_call(texts, timeout=60),
        concurrency,
        seconds,
        warmup_s=min(1.0, seconds / 3),
        channels=4,
        before_measure=read_counters,
        after_measure=read_counters,
    )
    if run.errors or run.warmup_errors:
        print(
            f"warning: {run.errors + run.warmup_errors} failed requests against {server.address()}",
            file=sys.stderr,
        )
    before, after = seen
    batches = max(1.0, after["batches"] - before["batches"])
    return {
        "texts_per_second": run.throughput,
        "busy": (after["busy_s"] - before["busy_s"]) / run.seconds,
        "mean_batch": (after["texts"] - before["texts"]) / batches,
    }


def mix_rate(rates: dict[str, float]) -> float:
    """Throughput of an equal mix when each class runs at the given rate: n / sum(1 / rate)."""
    return len(rates) / sum(1.0 / rate for rate in rates.values())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel
    from textserve.tuning.config import TuningConfig
    from textserve.tuning.measure import tune

    model = EncoderModel(ModelConfig())
    texts = class_texts(model.tokenizer)
    ids = {name: [e.ids for e in model.tokenizer.encode_many(rows)] for name, rows in texts.items()}
    tokens = {name: statistics.mean(len(i) for i in rows) for name, rows in ids.items()}
    mixed = [text for triple in zip(*texts.values(), strict=True) for text in triple]
    random.Random(0).shuffle(mixed)

    print(f"... tuning ({args.tune_seconds:.0f} s of measurement)", file=sys.stderr, flush=True)
    tune_started = time.perf_counter()
    tuned = tune(model, TuningConfig(seconds=args.tune_seconds))
    tune_seconds = time.perf_counter() - tune_started
    workdir = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    tuned_file = workdir / "tuned-budget.json"
    tuned.save(tuned_file)

    setups: list[tuple[str, dict[str, str]]] = [
        ("tuned", {"TEXTSERVE_EMBEDDING__TUNED_BUDGET_FILE": str(tuned_file)})
    ]
    setups += [
        (f"fixed max_batch_size={s}", {"TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE": str(s)})
        for s in args.sizes
    ]
    servers = [
        ServerProcess(["embedding"], SETTINGS | settings, label=label).launch() for label, settings in setups
    ]
    results: dict[str, list[dict[str, float]]] = {server.label: [] for server in servers}
    raw_rounds: list[dict[str, dict[int, float]]] = []
    try:
        print(f"... starting {len(servers)} services", file=sys.stderr, flush=True)
        for server in servers:
            await server.wait_ready()
        budgets = {server.label: await budget(server) for server in servers}
        for round_index in range(args.rounds):
            print(f"... round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
            raw_rounds.append(measure_raw(model, ids, args.raw_seconds))
            shift = round_index % len(servers)
            for server in servers[shift:] + servers[:shift]:
                results[server.label].append(await drive(server, mixed, args.concurrency, args.seconds))
    finally:
        for server in servers:
            server.stop()
    raw = {
        name: {size: statistics.median(r[name][size] for r in raw_rounds) for size in RAW_BATCHES}
        for name in CLASSES
    }
    return {
        "tokens": tokens,
        "raw": raw,
        "tuned": tuned.to_json(),
        "tune_seconds": tune_seconds,
        "budgets": budgets,
        "service": {
            label: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            for label, rounds in results.items()
        },
        "rounds": results,
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
    }


def render(result: dict[str, Any]) -> str:
    """The per-class raw table, then the mixed-workload table with ratios."""
    raw: dict[str, dict[int, float]] = result["raw"]
    best = {name: max(rates.values()) for name, rates in raw.items()}
    raw_mix = mix_rate(best)
    lines = ["raw model, texts/s by batch size (best per class starred):", ""]
    lines.append("| class | tokens | " + " | ".join(str(s) for s in RAW_BATCHES) + " |")
    lines.append("|---|---:|" + "---:|" * len(RAW_BATCHES))
    for name, rates in raw.items():
        cells = [f"{rates[s]:.0f}{'*' if rates[s] == best[name] else ''}" for s in RAW_BATCHES]
        lines.append(f"| {name} | {result['tokens'][name]:.0f} | " + " | ".join(cells) + " |")
    tuned = result["tuned"]
    lines += [
        "",
        f"tuner: max_batch_size={tuned['max_batch_size']} max_batch_tokens={tuned['max_batch_tokens']} "
        f"in {result['tune_seconds']:.1f} s (measurement {result['args']['tune_seconds']:.0f} s)",
        "",
        f"mixed workload (1/3 each class, {result['args']['concurrency']} in flight, 1 text/request), "
        f"median of {result['args']['rounds']} rounds x {result['args']['seconds']:.0f} s:",
        "",
        "| setup | budget in force (size / tokens) | texts/s | x best fixed | x raw best on the mix "
        "| model busy | texts per batch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    service = {label: row["texts_per_second"] for label, row in result["service"].items()}
    fixed = {label: rate for label, rate in service.items() if label.startswith("fixed")}
    best_fixed_label = max(fixed, key=lambda label: fixed[label])
    best_fixed = fixed[best_fixed_label]
    raw_single = mix_rate({name: rates[1] for name, rates in raw.items()})
    lines.append(
        f"| raw model, best batch per class (no server) | - | {raw_mix:.0f} "
        f"| {raw_mix / best_fixed:.2f} | 1.00 | - | - |"
    )
    lines.append(
        f"| raw model, batch 1 (no server) | - | {raw_single:.0f} "
        f"| {raw_single / best_fixed:.2f} | {raw_single / raw_mix:.2f} | - | - |"
    )
    for label, row in result["service"].items():
        size, tokens, _source = result["budgets"][label]
        rate = row["texts_per_second"]
        lines.append(
            f"| service, {label} | {size} / {tokens} | {rate:.0f} "
            f"| {rate / best_fixed:.2f} | {rate / raw_mix:.2f} "
            f"| {row['busy']:.0%} | {row['mean_batch']:.1f} |"
        )
    tuned_rate = service["tuned"]
    lines += [
        "",
        f"tuned vs best fixed ({best_fixed_label}): {tuned_rate / best_fixed:.2f}x (target >= 1.00); "
        f"tuned vs raw best on the mix: {tuned_rate / raw_mix:.2f}x (target >= 0.90)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per service per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all services")
    parser.add_argument(
        "--raw-seconds", type=float, default=0.5, help="raw model time per (class, batch size)"
    )
    parser.add_argument(
        "--tune-seconds", type=float, default=30.0, help="tuner measuring time (tuning.seconds)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64], help="fixed max_batch_size values"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
