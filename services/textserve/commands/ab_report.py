"""`textserve ab-report`: is model version B more accurate than version A on live feedback?

Reads the per-version feedback counters (`textserve_feedback_total{result="joined"}`,
`textserve_feedback_correct_total`) and the traffic (`textserve_predictions_total`) of one
model either straight from the services' /metrics pages (--metrics-url, once per replica:
the counts are summed; they are totals since each replica started) or from a Prometheus
server (--prometheus: increases over --window, every replica included), then prints per
version the joined feedback, the live accuracy and the traffic share, the two-sided
two-proportion z-test of B against A (`quality.ab`) and a plain verdict. Without --a and
--b, a model with exactly two versions is compared with A = the version that served more
predictions (the incumbent of a canary) and B = the other. Versions are model revisions.

Latency: `textserve_request_duration_seconds` is labelled by service, method and code,
not by model version, so it is shown per version as "n/a per version" and once for every
version together (p50 / p95 of the service's calls of --method).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from textserve.quality.ab import (
    ABReport,
    VersionStats,
    ab_report,
    prometheus_queries,
    stats_from_metrics_text,
    stats_from_prometheus,
)

LATENCY_METRIC = "textserve_request_duration_seconds"
NOT_PER_VERSION = "n/a per version"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `ab-report`."""
    parser = subparsers.add_parser(
        "ab-report",
        help="compare two model versions' live accuracy from feedback metrics (two-proportion z-test)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--metrics-url",
        action="append",
        metavar="URL",
        help="a service's /metrics (http://host:port/metrics or host:port); repeat for every replica",
    )
    source.add_argument("--prometheus", metavar="URL", help="Prometheus server (http://host:9090)")
    parser.add_argument(
        "--model", default="", help="model name (default with --metrics-url: the only one with feedback)"
    )
    parser.add_argument(
        "--a",
        default="",
        help="version A, the incumbent (default of two versions: the one with more traffic)",
    )
    parser.add_argument(
        "--b", default="", help="version B, the candidate (default of two versions: the other)"
    )
    parser.add_argument("--window", default="1d", help="PromQL range of the increases (--prometheus)")
    parser.add_argument("--service", default="classifier", help="service label of the counters and latency")
    parser.add_argument("--method", default="Classify", help="method whose latency is shown")
    parser.add_argument("--significance", type=float, default=0.05, help="level of the test")
    parser.add_argument("--min-feedback", type=int, default=30, help="joined pairs each version needs")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_ab_report)


class ReportError(Exception):
    """A problem the user can fix (printed as `error: ...`, exit status 2)."""


@dataclass(frozen=True)
class Latency:
    """Latency quantiles of the service's calls, every version together."""

    p50_s: float
    p95_s: float
    calls: float | None
    """Calls behind the quantiles (None when Prometheus gave only the quantiles)."""


def _ab_report(args: argparse.Namespace) -> int:
    if not 0.0 < args.significance < 1.0:
        print(f"error: --significance must be between 0 and 1 (got {args.significance})", file=sys.stderr)
        return 2
    try:
        if args.metrics_url:
            model, stats, latency, source = _from_metrics_pages(args)
        else:
            model, stats, latency, source = _from_prometheus(args)
        a, b = _choose_versions(stats, args.a, args.b, model)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = ab_report(a, b, model=model, significance=args.significance, min_feedback=args.min_feedback)
    print(_as_json(report, latency, source) if args.json else format_report(report, latency, source, args))
    return 0


# --- sources ------------------------------------------------------------------------------
def metrics_url(value: str) -> str:
    """http://host:port/metrics from host:port, http://host:port or a full URL."""
    url = value if "://" in value else f"http://{value}"
    parts = urllib.parse.urlsplit(url)
    return url if parts.path not in ("", "/") else urllib.parse.urlunsplit(parts._replace(path="/metrics"))


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def _from_metrics_pages(
    args: argparse.Namespace,
) -> tuple[str, dict[str, VersionStats], Latency | None, str]:
    pages = [_get(metrics_url(url), args.timeout) for url in args.metrics_url]
    model = args.model or _only_model(pages, args.service)
    totals: dict[str, VersionStats] = {}
    for page in pages:
        for version, stats in stats_from_metrics_text(page, model=model, service=args.service).items():
            known = totals.get(version, VersionStats(version, 0.0, 0.0, 0.0))
            totals[version] = VersionStats(
                version,
                known.joined + stats.joined,
                known.correct + stats.correct,
                known.predictions + stats.predictions,
            )
    buckets = _latency_buckets(pages, args.service, args.method)
    latency = None
    if buckets and buckets[-1][1] > 0:
        latency = Latency(histogram_quantile(0.5, buckets), histogram_quantile(0.95, buckets), buckets[-1][1])
    count = len(pages)
    return model, totals, latency, f"{count} /metrics page{'s' if count > 1 else ''} (totals since start)"


def _only_model(pages: Iterable[str], service: str) -> str:
    models: set[str] = set()
    for page in pages:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                labels = sample.labels
                joined = sample.name == "textserve_feedback_total" and labels.get("result") == "joined"
                if joined and labels.get("service") == service and labels.get("model"):
                    models.add(labels["model"])
    if len(models) != 1:
        found = ", ".join(sorted(models)) or "none"
        raise ReportError(f"give --model: the metrics hold joined feedback of {len(models)} models ({found})")
    return models.pop()


def _latency_buckets(pages: Iterable[str], service: str, method: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of the successful calls, summed over pages."""
    counts: dict[float, float] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            if family.name != LATENCY_METRIC:
                continue
            for sample in family.samples:
                labels = sample.labels
                if not sample.name.endswith("_bucket") or labels.get("code") != "OK":
                    continue
                if labels.get("service") == service and labels.get("method") == method:
                    bound = float(labels["le"])
                    counts[bound] = counts.get(bound, 0.0) + sample.value
    return sorted(counts.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear
    within the bucket, the highest finite bound when the quantile falls in +Inf."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _query(base: str, promql: str, timeout: float) -> dict[str, Any]:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        answer: dict[str, Any] = json.loads(_get(url, timeout))
    except urllib.error.HTTPError as error:  # Prometheus answers a bad query with 400 and a JSON body
        answer = json.loads(error.read().decode("utf-8"))
    return answer


def _label(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _from_prometheus(
    args: argparse.Namespace,
) -> tuple[str, dict[str, VersionStats], Latency | None, str]:
    if not args.model:
        raise ReportError("--prometheus needs --model")
    queries = prometheus_queries(args.model, args.window)
    stats = stats_from_prometheus(
        {name: _query(args.prometheus, q, args.timeout) for name, q in queries.items()}
    )
    selector = f'service={_label(args.service)},method={_label(args.method)},code="OK"'
    quantiles = []
    for q in (0.5, 0.95):
        increase = f"increase({LATENCY_METRIC}_bucket{{{selector}}}[{args.window}])"
        promql = f"histogram_quantile({q}, sum by (le) ({increase}))"
        answer = _query(args.prometheus, promql, args.timeout)
        result = answer.get("data", {}).get("result", []) if answer.get("status") == "success" else []
        value = float(result[0]["value"][1]) if result else math.nan
        quantiles.append(value)
    latency = Latency(quantiles[0], quantiles[1], None) if all(math.isfinite(v) for v in quantiles) else None
    return args.model, stats, latency, f"Prometheus {args.prometheus}, increases over {args.window}"


# --- versions -----------------------------------------------------------------------------
def _natural(version: str) -> tuple[tuple[int, int, str], ...]:
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", version)
    )


def _choose_versions(
    stats: Mapping[str, VersionStats], a: str, b: str, model: str
) -> tuple[VersionStats, VersionStats]:
    # The incumbent of a canary serves most traffic; ties fall back to natural order.
    versions = sorted(stats, key=lambda v: (-stats[v].predictions, _natural(v)))
    if not a or not b:
        if len(versions) != 2:
            found = ", ".join(versions) or "none"
            raise ReportError(f"give --a and --b: model {model!r} has {len(versions)} versions ({found})")
        if not a:
            a = next(v for v in versions if v != b)
        if not b:
            b = next(v for v in versions if v != a)
    if a == b:
        raise ReportError(f"--a and --b name the same version ({a!r})")
    missing = [v for v in (a, b) if v not in stats]
    if missing:
        found = ", ".join(versions) or "none"
        raise ReportError(f"model {model!r} has no metrics of version {', '.join(missing)} (found: {found})")
    return stats[a], stats[b]


# --- output -------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def format_report(report: ABReport, latency: Latency | None, source: str, args: argparse.Namespace) -> str:
    """The report as a plain-text table with the test and the verdict."""
    lines = [f"model {report.model}: A = {report.a.version} (incumbent), B = {report.b.version} (candidate)"]
    lines.append(f"source: {source}")
    lines.append(f"{'version':<16}{'feedback':>10}{'accuracy':>10}{'traffic':>10}  latency")
    for stats in (report.a, report.b):
        accuracy = f"{stats.accuracy:.4f}" if stats.joined > 0 else "-"
        share = report.traffic_share(stats)
        traffic = f"{share:.1%}" if math.isfinite(share) else "-"
        lines.append(
            f"{stats.version:<16}{stats.joined:>10.0f}{accuracy:>10}{traffic:>10}  {NOT_PER_VERSION}"
        )
    where = f"{args.service}/{args.method}"
    if latency is None:
        lines.append(f"latency of {where}, every version together: no calls recorded")
    else:
        calls = f" over {latency.calls:.0f} calls" if latency.calls is not None else ""
        lines.append(
            f"latency of {where}, every version together: p50 {_ms(latency.p50_s)}, "
            f"p95 {_ms(latency.p95_s)}{calls} ({LATENCY_METRIC} has no version label)"
        )
    if report.test is not None:
        t = report.test
        lines.append(
            f"difference B - A = {t.difference:+.4f} (95 % CI {t.ci_low:+.4f} .. {t.ci_high:+.4f}), "
            f"z = {t.z:.3f}, p = {t.p_value:.4g} (two-sided two-proportion z-test)"
        )
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _as_json(report: ABReport, latency: Latency | None, source: str) -> str:
    def version(stats: VersionStats) -> dict[str, Any]:
        return {
            "version": stats.version,
            "joined": stats.joined,
            "correct": stats.correct,
            "accuracy": _finite(stats.accuracy),
            "predictions": stats.predictions,
            "traffic_share": _finite(report.traffic_share(stats)),
            "latency": NOT_PER_VERSION,
        }

    test = report.test
    return json.dumps(
        {
            "model": report.model,
            "source": source,
            "a": version(report.a),
            "b": version(report.b),
            "test": None
            if test is None
            else {
                "difference": test.difference,
                "z": test.z,
                "p_value": test.p_value,
                "ci_low": test.ci_low,
                "ci_high": test.ci_high,
            },
            "significance": report.significance,
            "verdict": report.verdict,
            "latency_all_versions": None
            if latency is None
            else {"p50_s": _finite(latency.p50_s), "p95_s": _finite(latency.p95_s), "calls": latency.calls},
        }
    )
