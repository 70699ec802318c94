"""`make bench`: runs every benchmark and writes one report with latency-vs-throughput plots.

Every `loadtests/bench_*.py` present is run in turn (one at a time, so they never compete
for the CPU) as `python -m loadtests.<bench> --json <out>/raw/<bench>.json` (without
`--json` when a benchmark does not take it yet: its printed output still goes in the
report). Results are read with `loadtests.common.load_result`, which takes the common
format and the older ad-hoc ones. A benchmark that is missing, fails or times out is
listed as such; the report is written anyway.

Output, in --out (default bench-report/):
  report.md            summary, then per benchmark: table, notes, plot, printed output
  <bench>.png          latency (p50 solid, p99 dashed) against throughput, per series
  serving.png ...      (one PNG per benchmark that has series)
  raw/<bench>.json     what each benchmark wrote; raw/<bench>.log its printed output

    python -m loadtests.report [--only serving embedding] [--skip tuning] [--timeout 1200]
    python -m loadtests.report --args serving="--seconds 2" --args cache="--seconds 3"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.common import BenchResult, format_table, host_info, load_result

ORDER = ("serving", "embedding", "classifier", "generation", "cache", "tuning")
"""Report order; benchmarks not listed here follow, alphabetically."""


@dataclass
class Outcome:
    """What running one benchmark gave."""

    bench: str
    status: str
    seconds: float
    result: BenchResult | None = None
    log: str = ""
    plot: str | None = None


def discover() -> list[str]:
    """Names of the loadtests/bench_*.py present (without the prefix), in report order."""
    found = sorted(path.stem[len("bench_") :] for path in Path(__file__).parent.glob("bench_*.py"))
    return sorted(found, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name))


def _takes_json(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return bool(spec and spec.origin and "--json" in Path(spec.origin).read_text())


def run_bench(bench: str, out: Path, extra: list[str], timeout_s: float) -> Outcome:
    """Runs one benchmark in its own process; never raises."""
    module = f"loadtests.bench_{bench}"
    raw = out / "raw" / f"{bench}.json"
    raw.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, *extra]
    if _takes_json(module):
        command += ["--json", str(raw)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"== {bench}: {shlex.join(command[1:])}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
        log, status = (
            done.stdout + done.stderr,
            "ok" if done.returncode == 0 else f"failed (exit {done.returncode})",
        )
    except subprocess.TimeoutExpired as expired:
        log = _text(expired.stdout) + _text(expired.stderr)
        status = f"timed out after {timeout_s:.0f} s"
    seconds = time.monotonic() - started
    (out / "raw" / f"{bench}.log").write_text(log)
    outcome = Outcome(bench, status, seconds, log=log)
    if raw.exists():
        try:
            outcome.result = load_result(raw, bench)
        except (ValueError, KeyError, TypeError) as exc:
            outcome.status += f"; unreadable JSON ({exc})"
    elif status == "ok":
        outcome.status = "ok (printed output only)"
    print(f"   {outcome.status} in {seconds:.0f} s", flush=True)
    return outcome


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    return output if isinstance(output, str) else output.decode(errors="replace")


def plot(result: BenchResult, path: Path) -> bool:
    """Latency (p50 solid, p99 dashed) against throughput: one panel per series (their scales
    differ by orders of magnitude), concurrency marked on each point; False when no series."""
    series = [s for s in result.series if any(_point_ok(p) for p in s.points)]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    for index, item in enumerate(series):
        ax = axes[index // columns][index % columns]
        points = [p for p in item.points if _point_ok(p)]
        xs = [p["throughput"] for p in points]
        ax.plot(xs, [p["p50_ms"] for p in points], "o-", color="C0", label="p50")
        p99 = [p.get("p99_ms") for p in points]
        if all(_finite(v) for v in p99):
            ax.plot(xs, p99, "s--", color="C3", alpha=0.7, label="p99")
        for p in points:
            if _finite(p.get("concurrency")):
                ax.annotate(f"c={p['concurrency']:g}", (p["throughput"], p["p50_ms"]), fontsize=7, alpha=0.8)
        ax.set_title(item.name, fontsize=10)
        ax.set_xlabel(f"throughput ({item.throughput_unit})")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for index in range(len(series), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    fig.suptitle(result.title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _point_ok(point: dict[str, float]) -> bool:
    return _finite(point.get("throughput")) and _finite(point.get("p50_ms")) and point["p50_ms"] > 0


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_report(outcomes: list[Outcome], out: Path, missing: list[str]) -> Path:
    """report.md with a summary table and one section per benchmark."""
    lines = [
        "# textserve benchmark report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} on {json.dumps(host_info())}.",
        "Client and servers share this machine; compare ratios, not absolute numbers.",
        "",
        format_table(
            [
                {
                    "benchmark": o.bench,
                    "status": o.status,
                    "seconds": round(o.seconds),
                    "rows": len(o.result.rows) if o.result else 0,
                    "curves": len(o.result.series) if o.result else 0,
                }
                for o in outcomes
            ]
            + [{"benchmark": name, "status": "missing (no loadtests/bench_{name}.py)"} for name in missing]
        ),
        "",
    ]
    for outcome in outcomes:
        result = outcome.result
        lines += [
            f"## {result.title if result else outcome.bench}",
            "",
            f"`loadtests/bench_{outcome.bench}.py`: {outcome.status}.",
            "",
        ]
        if result:
            if result.host:
                lines += [f"Host: {json.dumps(result.host)}", ""]
            lines += [format_table(result.rows, result.columns or None), ""]
            lines += [f"- {note}" for note in result.notes]
            lines += [""] if result.notes else []
        if outcome.plot:
            lines += [f"![{outcome.bench}]({outcome.plot})", ""]
        if outcome.log.strip():
            shown = outcome.log.strip()[-6000:]
            lines += [
                "<details><summary>printed output</summary>",
                "",
                "```",
                shown,
                "```",
                "",
                "</details>",
                "",
            ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _extra_args(specs: list[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        extra[name.strip()] = shlex.split(value)
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-report"))
    parser.add_argument("--only", nargs="+", default=[], help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], help="skip these benchmarks")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one benchmark may take")
    parser.add_argument("--args", action="append", default=[], help='extra arguments: NAME="--flag value"')
    parser.add_argument("--report-only", action="store_true", help="rebuild from raw/*.json, run nothing")
    args = parser.parse_args(argv)
    out: Path = args.out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    present = discover()
    wanted = [b for b in (args.only or present) if b not in args.skip]
    missing = [b for b in wanted if b not in present] + [
        b for b in ORDER if b not in present and not args.only
    ]
    extra = _extra_args(args.args)
    outcomes: list[Outcome] = []
    for bench in (b for b in wanted if b in present):
        if args.report_only:
            raw = out / "raw" / f"{bench}.json"
            log_file = out / "raw" / f"{bench}.log"
            outcome = Outcome(
                bench, "from an earlier run", 0.0, log=log_file.read_text() if log_file.exists() else ""
            )
            outcome.result = load_result(raw, bench) if raw.exists() else None
        else:
            outcome = run_bench(bench, out, extra.get(bench, []), args.timeout)
        if outcome.result and plot(outcome.result, out / f"{bench}.png"):
            outcome.plot = f"{bench}.png"
        outcomes.append(outcome)
    report = write_report(outcomes, out, sorted(set(missing)))
    print(f"report: {report}")
    failed = [o.bench for o in outcomes if not o.status.startswith(("ok", "from"))]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
