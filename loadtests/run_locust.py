"""`make loadtest`: Locust, headless, against `textserve serve` on loopback, for a bounded time.

Starts every service `serve` knows in one process on free 127.0.0.1 ports, runs
loadtests/locustfile.py headless against them, samples the server's resident memory
every --sample-s seconds, then drains the server with SIGTERM. Passes (exit 0) when:
  * Locust saw no failed request, and the server counted no non-OK response;
  * the server drained and exited 0;
  * soak mode only: the RSS trend after the warm-up stays under --max-rss-slope-mb-per-min.
Default: 60 s at 12 users. SOAK=1 (or --soak): 10 minutes at a fixed request rate below
saturation (--per-user-rps per user). Results go to --out (default loadtest-report/):
summary.md, summary.json (loadtests/common.py format), rss.csv, rss.png, locust_*.csv,
locust.html, server.log.

    python -m loadtests.run_locust [--duration 60] [--users 12]
    SOAK=1 python -m loadtests.run_locust
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.common import BenchResult, format_table
from loadtests.serve import Served, servable

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {
    "tokenizer": "TokenizerUser",
    "embedding": "EmbeddingUser",
    "classifier": "ClassifierUser",
    "generation": "GenerationUser",
}
"""Service -> the locustfile user class that loads it."""


def server_settings(soak: bool) -> dict[str, Any]:
    """Service settings for the run: bounded cache, short generations, one torch thread."""
    return {
        "cache": {"backend": "memory", "max_entries": 5000},
        "generation": {
            "max_new_tokens_limit": 32,
            "max_new_tokens_default": 16,
            "model": {"path": "", "backend": "torch", "intra_op_threads": 1},
        },
    }


def rss_trend(samples: list[tuple[float, int]], warmup_s: float) -> dict[str, float]:
    """Least-squares slope (MB/min) and growth (MB) of RSS after the warm-up."""
    if not samples:
        return {"samples": 0, "slope_mb_per_min": float("nan"), "growth_mb": float("nan")}
    start = samples[0][0]
    kept = [(t - start, rss / 2**20) for t, rss in samples if t - start >= warmup_s]
    if len(kept) < 3:
        kept = [(t - start, rss / 2**20) for t, rss in samples]
    n = len(kept)
    mean_t = sum(t for t, _ in kept) / n
    mean_m = sum(m for _, m in kept) / n
    var = sum((t - mean_t) ** 2 for t, _ in kept)
    slope = sum((t - mean_t) * (m - mean_m) for t, m in kept) / var if var else 0.0
    return {
        "samples": float(n),
        "slope_mb_per_min": slope * 60.0,
        "growth_mb": kept[-1][1] - kept[0][1],
        "first_mb": kept[0][1],
        "last_mb": kept[-1][1],
        "peak_mb": max(m for _, m in kept),
    }


def plot_rss(samples: list[tuple[float, int]], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = samples[0][0]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([t - start for t, _ in samples], [rss / 2**20 for _, rss in samples], "-", color="C0")
    ax.axvline(warmup_s, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("textserve serve: resident memory under load")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_stats(csv_file: Path) -> list[dict[str, Any]]:
    """Locust's <prefix>_stats.csv as rows (the Aggregated row last)."""
    if not csv_file.exists():
        return []
    rows = []
    with csv_file.open() as handle:
        for row in csv.DictReader(handle):

            def number(key: str, row: dict[str, str] = row) -> float:
                try:
                    return float(row.get(key) or "nan")
                except ValueError:
                    return float("nan")

            rows.append(
                {
                    "name": row["Name"],
                    "requests": int(number("Request Count")),
                    "failures": int(number("Failure Count")),
                    "rps": number("Requests/s"),
                    "p50_ms": number("50%"),
                    "p95_ms": number("95%"),
                    "p99_ms": number("99%"),
                    "max_ms": number("Max Response Time"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    soak_env = os.environ.get("SOAK", "") not in ("", "0", "false")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak", action="store_true", default=soak_env, help="10-minute soak (also SOAK=1)")
    parser.add_argument("--duration", type=float, help="seconds of load (default 60, soak 600)")
    parser.add_argument("--users", type=int, help="Locust users (default 12, soak 8)")
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--per-user-rps", type=float, help="constant rate per user (default: none, soak 1.0)")
    parser.add_argument(
        "--warmup", type=float, help="seconds before the RSS trend counts (default 15, soak 120)"
    )
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-rss-slope-mb-per-min", type=float, default=2.0, help="soak: RSS trend limit")
    parser.add_argument(
        "--services", nargs="+", default=None, help="services to load (default: all serve knows)"
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest-report"))
    args = parser.parse_args(argv)
    duration = args.duration or (600.0 if args.soak else 60.0)
    users = args.users or (8 if args.soak else 12)
    rate = args.per_user_rps if args.per_user_rps is not None else (1.0 if args.soak else 0.0)
    warmup = args.warmup if args.warmup is not None else (120.0 if args.soak else 15.0)
    services = servable(tuple(args.services)) if args.services else servable()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    server = Served(services, server_settings(args.soak), workdir=out)
    print(
        f"starting textserve serve {' '.join(services)} ({'soak, ' if args.soak else ''}{duration:.0f} s) ..."
    )
    server.start()
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(args.spawn_rate), "-t", f"{duration:.0f}s",
        "--stop-timeout", "30", "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--only-summary", "--loglevel", "WARNING", "--per-user-rps", str(rate),
    ]  # fmt: skip
    for service in services:
        command += [f"--{service}-address", server.address(service)]
    command += [USER_CLASSES[service] for service in services]
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    locust = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        while locust.poll() is None:
            samples.append((time.monotonic(), server.rss_bytes()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                locust.wait(timeout=args.sample_s)
            if time.monotonic() - started > duration + 300:
                locust.kill()
                print("locust did not stop in time; killed", file=sys.stderr)
        samples.append((time.monotonic(), server.rss_bytes()))
        server_errors = server.error_counts()
    finally:
        if locust.poll() is None:
            locust.kill()
        drain_code = server.stop()

    stats = read_stats(out / "locust_stats.csv")
    trend = rss_trend(samples, warmup)
    if len(samples) >= 2:
        plot_rss(samples, warmup, out / "rss.png")
    with (out / "rss.csv").open("w") as handle:
        handle.write("seconds,rss_bytes\n")
        handle.writelines(f"{t - samples[0][0]:.1f},{rss}\n" for t, rss in samples)

    total = next((r for r in stats if r["name"] == "Aggregated"), None)
    failures = total["failures"] if total else -1
    problems = []
    if total is None:
        problems.append("Locust wrote no statistics")
    if failures:
        problems.append(f"{failures} failed requests (see {out}/locust_failures.csv)")
    # CANCELLED is the client going away (Locust closes its channels as users stop); a failure a
    # client saw is in Locust's own count.
    server_failures = {k: v for k, v in server_errors.items() if 'code="CANCELLED"' not in k}
    if server_failures:
        problems.append(f"server counted non-OK responses: {server_failures}")
    if drain_code != 0:
        problems.append(f"server exit code after SIGTERM: {drain_code}")
    if args.soak and trend["slope_mb_per_min"] > args.max_rss_slope_mb_per_min:
        problems.append(
            f"RSS grows {trend['slope_mb_per_min']:.2f} MB/min after warm-up "
            f"(limit {args.max_rss_slope_mb_per_min} MB/min)"
        )

    result = BenchResult(
        bench="loadtest", title=f"Locust {'soak' if args.soak else 'load test'}: {duration:.0f} s"
    )
    for row in stats:
        result.add_row(**row)
    result.notes += [
        f"services: {', '.join(services)}; users {users}; "
        f"per-user rate {rate or 'unlimited (50-250 ms pauses)'} requests/s",
        f"server RSS after {warmup:.0f} s warm-up: " + json.dumps({k: round(v, 2) for k, v in trend.items()}),
        f"server-side non-OK responses: {server_errors or 'none'}; drain exit code {drain_code}",
        "result: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)),
    ]
    result.write(out / "summary.json")
    summary = "\n".join(
        [f"# {result.title}", "", format_table(result.rows, result.columns), ""]
        + [f"- {note}" for note in result.notes]
        + ["", "![RSS](rss.png)", ""]
    )
    (out / "summary.md").write_text(summary)
    print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
