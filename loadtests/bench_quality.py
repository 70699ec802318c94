"""Drift detectors off vs on: does model-quality monitoring slow the services' requests?

The zero-shot sentiment classifier and the embedding service (`textserve serve classifier
embedding`, one process, the classifier on the embedding app's model as `make run` wires
it; --services narrows it) are started once per round with `<service>.quality.drift` off,
once with it on, in alternating order (off on, on off, ...: at least 4 rounds, so slow
drift of the machine hits both sides alike). Each round drives each service at each
concurrency of --concurrency (default 1 and 32) with one short text (~12 tokens) per
Classify / Embed call, cache skipped, and records latency percentiles and throughput. The
classifier's detectors test its outputs (label mix, confidences), the embedding service's
its vectors (MMD). The report gives, per workload, the medians over rounds of p50 latency
and throughput of each mode and the medians of the per-round ratios on/off (the figure
the issue bounds: p50 with detectors on within 5 % of off, same-run ratio).

"On" is drift enabled with a reference captured from the first --window inputs (or
--reference FILE from `textserve drift-reference`, with vectors and classifier outputs,
used by both services), window --window, a test every --window inputs or every second,
whichever comes first: the detectors run all the time under load. After each "on" round
the server's `textserve_drift_test_cpu_seconds` shows how many tests ran and their CPU.
When the checkout's settings have no `quality` section (issue 16's service wiring
absent), both modes run the same configuration and the ratios measure the noise floor (an
A/A run); the report says so.

The detectors' CPU per run outside the service comes from `loadtests/bench_drift.py`
(`make bench-drift`), run here on random 200 x 384 windows with BLAS on one thread.

    python -m loadtests.bench_quality [--rounds 4] [--seconds 5] [--concurrency 1 32]
        [--services classifier embedding] [--reference ref.npz] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtests.common import (
    OFF_ON,
    BenchResult,
    LatencyStats,
    Workload,
    bench_parser,
    closed_loop,
    print_table,
    run_bench,
)
from loadtests.serve import ServerProcess, free_port
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = {"TEXTSERVE_CACHE__BACKEND": "none"}
MODES = OFF_ON
SERVICES = ("classifier", "embedding")


def quality_wired(services: list[str]) -> bool:
    """Whether this checkout's settings have the `quality` section of every service (issue 16)."""
    from textserve.settings import Settings

    sections = Settings.model_fields
    return all("quality" in getattr(sections[service].annotation, "model_fields", {}) for service in services)


def mode_env(
    mode: str, services: list[str], window: int, reference: Path | None, wired: bool
) -> dict[str, str]:
    """The TEXTSERVE_* settings of one mode."""
    env = dict(SETTINGS)
    if not wired:
        return env
    for service in services:
        prefix = f"TEXTSERVE_{service.upper()}__QUALITY__DRIFT__"
        if mode == "off":
            env[f"{prefix}ENABLED"] = "false"
            continue
        env |= {
            f"{prefix}ENABLED": "true",
            f"{prefix}WINDOW_SIZE": str(window),
            f"{prefix}TEST_EVERY_N": str(window),
            f"{prefix}TEST_EVERY_S": "1",
        }
        if reference is not None:
            env[f"{prefix}REFERENCE_FILE"] = str(reference.resolve())
        else:
            env[f"{prefix}CAPTURE_REFERENCE"] = str(window)
    return env


def drift_tests(metrics_page: str) -> dict[str, tuple[float, float]]:
    """(tests run, CPU seconds) per service/detector from textserve_drift_test_cpu_seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(metrics_page):
        if family.name != "textserve_drift_test_cpu_seconds":
            continue
        for sample in family.samples:
            detector = f"{sample.labels.get('service', '?')}/{sample.labels.get('detector', '?')}"
            if sample.name.endswith("_count"):
                found[detector][0] += sample.value
            elif sample.name.endswith("_sum"):
                found[detector][1] += sample.value
    return {detector: (runs, cpu) for detector, (runs, cpu) in found.items()}


async def one_round(
    mode: str,
    services: list[str],
    env: dict[str, str],
    concurrencies: list[int],
    seconds: float,
    texts: list[str],
) -> tuple[dict[str, LatencyStats], dict[str, tuple[float, float]]]:
    """Every workload against one server of `mode`; the drift tests it ran."""
    from loadtests.bench_classifier import classify_call
    from loadtests.bench_embedding import embed_call

    calls = {"classifier": ("classify", classify_call(texts)), "embedding": ("embed", embed_call(texts))}
    results: dict[str, LatencyStats] = {}
    ports = {service: free_port() for service in services}
    async with ServerProcess(
        services, env, ports=ports, label=f"{' '.join(services)}, drift {mode}"
    ) as server:
        for service in services:
            name, call = calls[service]
            for concurrency in concurrencies:
                run = await closed_loop(
                    server.address(service), call, concurrency, seconds, warmup_s=1.0, channels=4
                )
                results[f"{name} c={concurrency}"] = run.stats()
        tests = drift_tests(server.metrics())
    return results, tests


def drift_cpu(repeats: int) -> list[dict[str, Any]]:
    """bench_drift's per-detector CPU cost (random unit vectors, 200 x 384, BLAS one thread)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from loadtests.bench_drift import run_detectors, unit_rows

    options = argparse.Namespace(window=200, dimensions=384, reference=500, permutations=200, projections=32)
    options.repeats = repeats
    rng = np.random.default_rng(0)
    reference, pool = unit_rows(rng, 500, 384), unit_rows(rng, 2000, 384)
    labels = [str(label) for label in rng.integers(0, 3, 1000)]
    confidences = rng.uniform(0.4, 1.0, 1000)

    def window() -> np.ndarray:
        return pool[rng.integers(0, len(pool), 200)]

    with threadpool_limits(limits=1, user_api="blas"):
        measured = run_detectors(options, reference, window, labels, confidences)
    return [
        {"detector": name, "median_ms": cost["median_s"] * 1e3, "max_ms": cost["max_s"] * 1e3}
        for name, cost in measured.items()
    ]


async def run(args: argparse.Namespace) -> BenchResult:
    if args.rounds < 4:
        raise SystemExit(f"--rounds must be at least 4 (got {args.rounds})")
    services = [service for service in SERVICES if service in args.services]
    wired = quality_wired(services)
    texts = make_texts(512, 10)
    workloads: dict[str, Workload] = defaultdict(Workload)
    tests_per_round: list[dict[str, tuple[float, float]]] = []
    for number in range(args.rounds):
        for mode in MODES if number % 2 == 0 else tuple(reversed(MODES)):
            env = mode_env(mode, services, args.window, args.reference, wired)
            measured, tests = await one_round(mode, services, env, args.concurrency, args.seconds, texts)
            for key, stats in measured.items():
                workloads[key].runs[mode].append(stats)
            if mode == "on":
                tests_per_round.append(tests)
            shown = ", ".join(
                f"{k}: p50 {s.p50_ms:.2f} ms, {s.throughput:.0f}/s" for k, s in measured.items()
            )
            print(f"round {number + 1} drift {mode}: {shown}", flush=True)

    result = BenchResult("quality", "Latency with drift detectors off vs on (same-run ratios)")
    for key, workload in workloads.items():
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
    if not wired:
        result.notes.append(
            "<service>.quality is not in this checkout's settings (issue 16's service wiring absent): "
            "both modes ran the same configuration, so the ratios are the noise floor (A/A)."
        )
    else:
        runs: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for tests in tests_per_round:
            for detector, (count, cpu) in tests.items():
                runs[detector][0] += count
                runs[detector][1] += cpu
        if not runs:
            result.notes.append("drift on: the server exported no textserve_drift_test_cpu_seconds samples")
        for detector, (count, cpu) in sorted(runs.items()):
            per_run = f"{cpu / count * 1e3:.1f} ms CPU per test" if count else "-"
            result.notes.append(
                f"in service, drift on: {detector} ran {count:.0f} tests over the rounds, {per_run}"
            )
    if args.drift_repeats > 0:
        rows = drift_cpu(args.drift_repeats)
        print_table(
            rows, title="detector CPU per run (loadtests/bench_drift.py: random 200 x 384, BLAS 1 thread)"
        )
        for row in rows:
            cost = f"median {row['median_ms']:.1f} ms, max {row['max_ms']:.1f} ms CPU"
            result.notes.append(f"bench_drift {row['detector']}: {cost}")
    else:
        result.notes.append("detector CPU per run: see `make bench-drift`")
    for note in result.notes:
        print(f"note: {note}")
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds of off and on, order alternating (>= 4)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per workload")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="concurrent callers")
    parser.add_argument(
        "--services", nargs="+", choices=SERVICES, default=list(SERVICES), help="services to measure"
    )
    parser.add_argument("--window", type=int, default=200, help="drift window (and captured reference) size")
    parser.add_argument("--reference", type=Path, help="reference .npz (default: capture the first --window)")
    parser.add_argument(
        "--drift-repeats", type=int, default=10, help="bench_drift runs per detector (0: skip)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    run_bench(parser, run)


if __name__ == "__main__":
    main()
