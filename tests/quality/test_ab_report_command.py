"""`textserve ab-report` against real /metrics endpoints and a real Prometheus server.

An exporter process (textserve's own metric objects on its own /metrics server, as
tests/integration/test_prometheus_scrape.py's FILL_EVERY_METRIC does) sets the feedback,
prediction and latency series of two versions of a model with known numbers; the command
reads them over HTTP. The accuracies and the p-value it prints must equal the counts'
ratios and scipy's Pearson chi-square test of the 2 x 2 table without continuity
correction (the same test as the two-proportion z-test: z^2 = chi^2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import chi2_contingency
from textserve.cli import main

REPO = Path(__file__).resolve().parents[2]

EXPORTER = r"""
import json, sys
from textserve.core import metrics
from textserve.quality import metrics as quality

spec = json.loads(sys.argv[1])
port = metrics.start_metrics_server("127.0.0.1", 0)

def children():
    for model, version, joined, correct, predictions in spec["versions"]:
        yield (
            quality.FEEDBACK.labels("classifier", model, version, "joined"),
            quality.FEEDBACK_CORRECT.labels("classifier", model, version),
            {label: quality.PREDICTIONS.labels("classifier", model, version, label) for label in predictions},
        ), (joined, correct, predictions)

made = list(children())  # every series exists (at 0) before the first scrape
unknown = quality.FEEDBACK.labels("classifier", "", "", "unknown")
latency = metrics.REQUEST_DURATION.labels("classifier", "Classify", "OK")
print(port, flush=True)
if spec["wait"]:
    sys.stdin.readline()
for (joined_c, correct_c, prediction_c), (joined, correct, predictions) in made:
    joined_c.inc(joined)
    correct_c.inc(correct)
    for label, count in predictions.items():
        prediction_c[label].inc(count)
unknown.inc(7)
for seconds, count in spec["latency"]:
    for _ in range(count):
        latency.observe(seconds)
print("set", flush=True)
sys.stdin.readline()
"""

# (model, version, joined, correct, predictions by label)
VERSIONS: list[tuple[str, str, int, int, dict[str, int]]] = [
    ("sst2", "1", 400, 340, {"positive": 1800, "negative": 1200}),
    ("sst2", "2", 380, 349, {"positive": 600, "negative": 400}),
    ("other", "1", 50, 10, {"positive": 50}),
]
LATENCY = [(0.004, 90), (0.2, 10)]


@contextmanager
def exporter(versions: list[Any], *, wait: bool = False) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """host:port of a process exporting `versions`' counters (after a line on its stdin when `wait`)."""
    spec = {"versions": versions, "latency": LATENCY, "wait": wait}
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        if not wait:
            assert process.stdout.readline().strip() == "set"
        yield f"127.0.0.1:{port}", process
    finally:
        process.kill()
        process.wait(timeout=10)


def release(process: subprocess.Popen[str]) -> None:
    """Lets a waiting exporter set its counters."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("go\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "set"


def scipy_p_value(correct_a: float, n_a: float, correct_b: float, n_b: float) -> float:
    table = [[correct_a, n_a - correct_a], [correct_b, n_b - correct_b]]
    return float(chi2_contingency(table, correction=False).pvalue)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ab-report", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_from_one_metrics_page(capsys: pytest.CaptureFixture[str]) -> None:
    with exporter(VERSIONS) as (address, _):
        code, out, err = run(capsys, "--metrics-url", f"http://{address}/metrics", "--model", "sst2")
        assert code == 0, err
        lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
        # version, feedback, accuracy, traffic, latency
        assert lines["1"][1:4] == ["400", f"{340 / 400:.4f}", "75.0%"]
        assert lines["2"][1:4] == ["380", f"{349 / 380:.4f}", "25.0%"]
        assert " ".join(lines["1"][4:]) == " ".join(lines["2"][4:]) == "n/a per version"
        expected_p = scipy_p_value(340, 400, 349, 380)
        assert f"p = {expected_p:.4g}" in out
        assert expected_p < 0.05
        assert "verdict: 2 is more accurate than 1" in out
        assert "over 100 calls" in out  # latency of every version together

        code, out, err = run(capsys, "--metrics-url", address, "--model", "sst2", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["a"]["accuracy"] == 340 / 400 and report["b"]["accuracy"] == 349 / 380
        assert report["a"]["traffic_share"] == 0.75
        assert report["a"]["latency"] == "n/a per version"
        assert report["test"]["p_value"] == pytest.approx(expected_p, rel=1e-9, abs=1e-15)
        assert report["latency_all_versions"]["calls"] == 100
        assert report["latency_all_versions"]["p50_s"] <= 0.005 < report["latency_all_versions"]["p95_s"]

        # Two models with feedback: the model must be named.
        code, _, err = run(capsys, "--metrics-url", address)
        assert code == 2 and "give --model" in err and "other, sst2" in err
        code, _, err = run(capsys, "--metrics-url", address, "--model", "sst2", "--a", "1", "--b", "7")
        assert code == 2 and "no metrics of version 7" in err


def test_replicas_are_summed_and_small_samples_get_no_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    half_a = [("sst2", "1", 200, 170, {"positive": 900}), ("sst2", "2", 190, 175, {"positive": 300})]
    half_b = [("sst2", "1", 200, 170, {"positive": 900}), ("sst2", "2", 190, 174, {"positive": 300})]
    with exporter(half_a) as (first, _), exporter(half_b) as (second, _):
        code, out, err = run(capsys, "--metrics-url", first, "--metrics-url", second, "--json")
        assert code == 0, err  # one model with feedback: found without --model
        report = json.loads(out)
        assert report["model"] == "sst2"
        assert (report["a"]["joined"], report["a"]["correct"]) == (400, 340)
        assert (report["b"]["joined"], report["b"]["correct"]) == (380, 349)
        assert report["test"]["p_value"] == pytest.approx(scipy_p_value(340, 400, 349, 380), rel=1e-9)

        code, out, err = run(capsys, "--metrics-url", first, "--min-feedback", "500")
        assert code == 0, err
        assert "verdict: not enough feedback" in out and "p = " not in out


def test_report_from_prometheus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.integration.test_prometheus_scrape import run_prometheus

    with exporter(VERSIONS, wait=True) as (address, process), run_prometheus(tmp_path, address) as prometheus:
        release(process)
        joined = 'sum by (version) (textserve_feedback_total{model="sst2",result="joined"})'
        _wait(lambda: len([r for r in prometheus.query(joined) if float(r["value"][1]) > 0]) == 2)
        # Two more scrapes after the step (polled, not slept), so increase() has points on both sides.
        scrapes = 'min(count_over_time(textserve_feedback_total{model="sst2",result="joined"}[5m]))'
        seen = float(prometheus.query(scrapes)[0]["value"][1])
        _wait(lambda: float(prometheus.query(scrapes)[0]["value"][1]) >= seen + 2)
        code, out, err = run(
            capsys, "--prometheus", prometheus.url, "--model", "sst2", "--window", "5m", "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        a, b = report["a"], report["b"]
        # increase() extrapolates to the end of the window, and each query is evaluated at its own
        # instant: close to the counts, not equal.
        assert a["joined"] == pytest.approx(400, rel=0.5) and b["joined"] == pytest.approx(380, rel=0.5)
        assert a["accuracy"] == pytest.approx(340 / 400, rel=0.01)
        assert b["accuracy"] == pytest.approx(349 / 380, rel=0.01)
        expected = scipy_p_value(a["correct"], a["joined"], b["correct"], b["joined"])
        assert report["test"]["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        assert report["latency_all_versions"]["p50_s"] <= 0.005

        code, _, err = run(capsys, "--prometheus", prometheus.url)
        assert code == 2 and "--prometheus needs --model" in err


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for Prometheus to scrape the counters"
        time.sleep(0.25)
