"""A real Prometheus server scrapes textserve and runs every dashboard query and alert rule.

Two sources of metrics:
- `test_dashboards_against_every_metric`: a process that fills every metric of
  textserve.core.metrics and textserve.quality.metrics (all services, generation, cache and
  model quality: drift, feedback, live accuracy included), so every panel of every
  dashboard must return data.
- `test_live_services`: `textserve serve embedding generation gateway` as a subprocess, driven
  with real RPCs and HTTP calls; its /metrics is scraped directly (names checked against
  core/ and quality/metrics.py) and by Prometheus, and every panel whose series these services export
  must return data. The panels checked (and those left out, with the reason: e.g. no
  request was ever rejected) are printed and recorded as a property.
- `test_live_quality_dashboard_after_drift_and_feedback`: `textserve serve embedding classifier
  gateway` (zero-shot classifier sharing the embedding model) with drift detection, feedback
  and the payload log on. SST-2 reviews with their labels as feedback make the drift
  references, CoNLL-2003 news then drifts away while feedback goes on over gRPC and the
  gateway's /v1/feedback; every query of the quality dashboard must return data, apart from
  the panels listed in NOT_PRODUCED with the reason. Skipped when ../shared/data is absent.

Needs the `prometheus` binary (Debian package `prometheus`); skipped only when it is missing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import REPO, RULES_FILE, Query, dashboard_queries, exported_series

RATE_WINDOW = "15s"
SCRAPE_INTERVAL = "1s"
TEXTSERVE = Path(sys.executable).parent / "textserve"
# Series selectors (name plus optional {matchers}) inside a PromQL expression.
_SELECTOR = re.compile(r"\b(textserve_[a-z0-9_]+)(\{[^}]*\})?")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _scraped(prometheus: Prometheus, times: int = 3) -> bool:
    """Whether Prometheus has scraped every target at least `times` times (rates have points)."""
    try:
        result = prometheus.query("min(count_over_time(up[10m]))")
    except (OSError, AssertionError):
        return False
    return bool(result) and float(result[0]["value"][1]) >= times


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# --- Prometheus -------------------------------------------------------------------------
@dataclass
class Prometheus:
    """A running Prometheus server on loopback."""

    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error."""
        body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        answer = json.loads(body)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return list(answer["data"]["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its evaluation health."""
        answer = json.loads(_get(f"{self.url}/api/v1/rules"))
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]


@contextmanager
def run_prometheus(tmp_path: Path, target: str) -> Iterator[Prometheus]:
    """Prometheus scraping `target` every second, with the textserve alert rules loaded."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    port = _free_port()
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": "textserve",
                # As the chart's ServiceMonitors: textserve's own `service` label wins.
                "honor_labels": True,
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return "Ready" in _get(f"{server.url}/-/ready", timeout=1)
            except (urllib.error.URLError, ConnectionError):
                return False

        _wait(ready, 30, "Prometheus to start")
        _wait(lambda: bool(server.query('up{job="textserve"} == 1')), 30, "the first successful scrape")
        yield server
    finally:
        _stop(process)
        log.close()


# --- checking dashboard queries ---------------------------------------------------------
@dataclass
class PanelCheck:
    """What happened to one dashboard query."""

    query: Query
    checked: bool
    detail: str
    foreign: bool = False
    """The query reads only other exporters' series (kube-state-metrics, cAdvisor, DCGM),
    which a textserve scrape never has: it cannot be checked here (tests/deploy checks its
    metric and label names)."""


def _concrete(query: Query, service: str) -> str:
    expr = query.expr.replace("$__rate_interval", RATE_WINDOW).replace("$service", service)
    return Query(query.source, query.title, expr).concrete()


def _name(query: Query) -> str:
    return f"{query.source} / {query.title}" + (f" [{query.target}]" if query.target else "")


def check_dashboards(
    prometheus: Prometheus, service: str, require_all: bool, dashboard: str | None = None
) -> list[PanelCheck]:
    """Runs every dashboard query (of `dashboard`, a file name, when given). A query whose
    series all exist must return data; with require_all every query must (every metric is
    being exported). `service` replaces $service (a regex where the queries match with =~)."""
    results = []
    for query in dashboard_queries():
        if dashboard is not None and query.source != dashboard:
            continue
        expr = _concrete(query, service)
        samples = prometheus.query(expr)
        if samples:
            if require_all:
                values = [float(sample["value"][1]) for sample in samples]
                assert any(math.isfinite(v) for v in values), f"{_name(query)}: only NaN/Inf for {expr}"
            results.append(PanelCheck(query, True, f"{len(samples)} series"))
            continue
        selectors = sorted({m.group(0) for m in _SELECTOR.finditer(expr)})
        if not selectors:
            results.append(PanelCheck(query, False, "only other exporters' series", foreign=True))
            continue
        missing = [selector for selector in selectors if not prometheus.query(f"count({selector})")]
        assert missing, f"{_name(query)}: its series exist but the query returns no data: {expr}"
        assert not require_all, f"{_name(query)}: no series for {missing}"
        results.append(PanelCheck(query, False, f"no series yet (never recorded): {missing}"))
    return results


def check_rules(prometheus: Prometheus) -> None:
    """Every alert rule has been evaluated without error."""

    def evaluated() -> bool:
        return all(rule.get("lastEvaluation", "").startswith("20") for rule in prometheus.rules())

    _wait(evaluated, 20, "every rule to be evaluated")
    rules = prometheus.rules()
    assert len(rules) >= 10
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken


def report(checks: list[PanelCheck], record: Callable[[str, object], None]) -> str:
    """A readable list of the panels checked and left out."""
    lines = [f"{'checked' if c.checked else 'skipped'}: {_name(c.query)}: {c.detail}" for c in checks]
    record("panels_checked", [_name(c.query) for c in checks if c.checked])
    record("panels_skipped", [f"{_name(c.query)}: {c.detail}" for c in checks if not c.checked])
    text = "\n".join(lines)
    print(text)
    return text


# --- 1: every metric filled -------------------------------------------------------------
FILL_EVERY_METRIC = r"""
import random, sys, time
from prometheus_client.metrics import MetricWrapperBase
from textserve.core import metrics
from textserve.quality import metrics as quality_metrics

VALUES = {
    "service": ["tokenizer", "embedding", "classifier", "generation", "gateway"],
    "model": ["all-MiniLM-L6-v2"],
    "method": ["Embed", "Classify"],
    "code": ["OK", "OK", "OK", "INVALID_ARGUMENT", "INTERNAL", "RESOURCE_EXHAUSTED"],
    "reason": ["cancelled", "expired", "length", "stop"],
    "version": ["1", "2"],
    "label": ["negative", "positive"],
    "detector": ["mmd", "label_mix", "confidence"],
    "result": ["joined", "unknown", "duplicate"],
    "entity_type": ["PER", "LOC"],
    "kind": ["prediction", "feedback"],
}
# Gauges in [0, 1] (p-values, accuracy, recall) and 0/1 flags.
SHARES = ("p_value", "accuracy", "recall")
port = metrics.start_metrics_server("127.0.0.1", 0)
print(port, flush=True)
every = [
    m
    for m in [*vars(metrics).values(), *vars(quality_metrics).values()]
    if isinstance(m, MetricWrapperBase)
]

def children(metric):
    combos = [{}]
    for label in metric._labelnames:
        combos = [{**c, label: v} for c in combos for v in VALUES.get(label, ["x"])]
    return [metric.labels(**c) if c else metric for c in combos]

while True:
    for metric in every:
        for child in children(metric):
            if metric._type == "counter":
                child.inc(random.randint(1, 5))
            elif metric._type == "gauge" and metric._name.endswith(SHARES):
                child.set(random.random())
            elif metric._type == "gauge" and metric._name.endswith("_detected"):
                child.set(random.randint(0, 1))
            elif metric._type == "gauge":
                child.set(random.uniform(1, 100) if "capacity" not in metric._name else 1000)
            elif metric._type == "histogram":
                child.observe(random.uniform(0.001, 2.0))
    time.sleep(0.2)
"""


@pytest.fixture
def every_metric_exporter() -> Iterator[str]:
    """host:port of a process exporting every textserve metric, changing all the time."""
    process = subprocess.Popen(
        [sys.executable, "-c", FILL_EVERY_METRIC], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)


def test_dashboards_against_every_metric(
    tmp_path: Path, every_metric_exporter: str, record_property: Callable[[str, object], None]
) -> None:
    with run_prometheus(tmp_path, every_metric_exporter) as prometheus:
        _wait(lambda: _scraped(prometheus), 120, "three scrapes, so rates have two points")
        checks = check_dashboards(prometheus, "embedding", require_all=True)
        report(checks, record_property)
        assert all(c.checked for c in checks if not c.foreign)
        assert sum(c.checked for c in checks) > 40
        check_rules(prometheus)


# --- 2: live services ------------------------------------------------------------------
LIVE_SERVICES = ("embedding", "generation", "gateway")
"""What `textserve serve` runs for the live test: one process, one /metrics."""


@dataclass
class LiveServices:
    """Addresses of the live services."""

    embedding: str
    generation: str
    gateway: str
    metrics: str


@contextmanager
def serve(tmp_path: Path, services: tuple[str, ...], config: dict[str, Any], gateway: str) -> Iterator[None]:
    """`textserve serve <services>` with `config` as a subprocess, until the gateway at
    `gateway` is ready (every backend it is configured with reports SERVING)."""
    if not TEXTSERVE.exists():
        pytest.skip(f"{TEXTSERVE} is missing (pip install -e .)")
    config_file = tmp_path / "textserve.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTSERVE_")}
    log_path = tmp_path / "textserve.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(TEXTSERVE), "serve", *services, "--config", str(config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:

        def gateway_ready() -> bool:
            assert process.poll() is None, log_path.read_text()[-4000:]
            try:
                _get(f"http://{gateway}/ready", timeout=2)  # 200 once every backend serves
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        _wait(gateway_ready, 180, "the services to load their models and the gateway to be ready")
        yield
    finally:
        _stop(process)
        log.close()


def _server(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "grace_period_s": 1, "port": port}


@pytest.fixture
def live_services(tmp_path: Path) -> Iterator[LiveServices]:
    """`textserve serve embedding generation gateway` as a subprocess, once every service is ready.

    The lead's in-process `serve all` fixture can replace this one: the test only needs the
    addresses.
    """
    from tests.support import ONNX_CACHE

    ports = {name: _free_port() for name in ("embedding", "generation", "gateway", "metrics")}
    live = LiveServices(**{name: f"127.0.0.1:{port}" for name, port in ports.items()})
    config = {
        "log": {"level": "WARNING"},
        "metrics": {"host": "127.0.0.1", "port": ports["metrics"]},
        "cache": {"backend": "memory"},
        "embedding": {
            "server": _server(ports["embedding"]),
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
            "batcher": {"max_queue_delay_ms": 2},
        },
        # Empty model path: the built-in tiny random model.
        "generation": {"server": _server(ports["generation"])},
        "gateway": {
            "host": "127.0.0.1",
            "port": ports["gateway"],
            "grace_period_s": 1,
            "embedding_address": live.embedding,
            "generation_address": live.generation,
        },
    }
    with serve(tmp_path, LIVE_SERVICES, config, live.gateway):
        yield live


def _check_exported_names(metrics: str) -> None:
    """The live scrape: every textserve series on /metrics is one core/ or quality/metrics.py defines."""
    text = _get(f"http://{metrics}/metrics")
    exported = exported_series()
    names = {
        s.name
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("textserve_")
    }
    assert names, "no textserve metrics on /metrics"
    unknown = sorted(names - set(exported))
    assert not unknown, f"not in core/ or quality/metrics.py: {unknown}"


def _drive(live: LiveServices, stop: threading.Event) -> None:
    """Traffic on every live service until stopped: embeddings (repeated texts: cache hits and
    misses), one bad request a round, a short generation stream, an HTTP embedding call."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc, generation_pb2, generation_pb2_grpc

    texts = [f"sentence number {i} about serving models" for i in range(40)]
    body = json.dumps({"model": "all-MiniLM-L6-v2", "input": ["through the gateway"]}).encode()
    with (
        grpc.insecure_channel(live.embedding) as embed_channel,
        grpc.insecure_channel(live.generation) as gen_channel,
    ):
        embed = embedding_pb2_grpc.EmbeddingServiceStub(embed_channel)
        generate = generation_pb2_grpc.GenerationServiceStub(gen_channel)
        round_ = 0
        while not stop.is_set():
            embed.Embed(
                embedding_pb2.EmbedRequest(texts=texts[round_ % 8 * 5 : round_ % 8 * 5 + 5]), timeout=10
            )
            try:
                embed.Embed(embedding_pb2.EmbedRequest(texts=[]), timeout=10)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            request = generation_pb2.GenerateRequest(
                prompt=f"round {round_}", params=generation_pb2.SamplingParams(max_new_tokens=4)
            )
            assert sum(1 for _ in generate.GenerateStream(request, timeout=30)) >= 1
            http = urllib.request.Request(
                f"http://{live.gateway}/v1/embeddings",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(http, timeout=10) as response:
                assert response.status == 200
            round_ += 1
            time.sleep(0.05)


def test_live_services(
    tmp_path: Path, live_services: LiveServices, record_property: Callable[[str, object], None]
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            _drive(live_services, stop)
        except BaseException as error:  # surfaced below
            errors.append(error)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        # The live scrape: every textserve series is one core/ or quality/metrics.py defines.
        _wait(
            lambda: "textserve_requests_total{" in _get(f"http://{live_services.metrics}/metrics"),
            60,
            "the driver's first requests",
        )
        _check_exported_names(live_services.metrics)

        with run_prometheus(tmp_path, live_services.metrics) as prometheus:
            _wait(lambda: _scraped(prometheus), 120, "three scrapes of the live services")
            assert not errors, errors
            checks = check_dashboards(prometheus, "embedding", require_all=False)
            check_rules(prometheus)
    finally:
        stop.set()
        driver.join(timeout=30)
    assert not errors, errors
    text = report(checks, record_property)
    checked = {c.query.title for c in checks if c.checked}
    must = {
        # service dashboard ($service = embedding)
        "Request rate by method",
        "Responses by status code",
        "Server error ratio",
        "Latency percentiles (OK)",
        "Batch size",
        "Queue time",
        "Inference time per batch",
        "Queue depth and capacity",
        "Cache hit ratio",
        # ... its Versions row: the default single version "1" (model lifecycle, issue 14)
        "Traffic share by version",
        "Routing weight by version",
        "Version state",
        "Latency by version (p50, p99)",
        "Server error ratio by version",
        # overview
        "Request rate by service",
        "Cache hit ratio by service",
        "Generated tokens per second",
        # generation
        "Time to first token",
        "Inter-token latency",
        "Running and waiting sequences",
        "KV cache used",
        "Gateway requests by status code",
    }
    assert must <= checked, f"panels the live services must feed were not checked:\n{text}"


# --- 3: live model quality: drift and feedback -----------------------------------------
QUALITY_SERVICES = ("embedding", "classifier", "gateway")
"""The live quality test's process: the zero-shot classifier shares the embedding model."""
QUALITY_DASHBOARD = "textserve-quality.json"
SERVICES_WITH_QUALITY = "classifier|embedding"
"""$service of the quality dashboard (its queries match service with =~)."""
REFERENCE_TEXTS = 48
"""SST-2 sentences sent first: each service captures its drift reference from them."""
DRIFT_WINDOW = 48
"""Recent inputs tested against the reference, every DRIFT_WINDOW / 3 new ones."""
BATCH = 8
NOT_PRODUCED = {
    "Entities per second by type": "textserve_entities_total is written by token classification "
    "(NER) only; neither the zero-shot classifier nor the embedding service finds entities",
}
"""Quality panels this run cannot feed, with the reason; every other one must return data."""


@dataclass
class QualityServices:
    """Addresses of the live services with model quality on."""

    embedding: str
    classifier: str
    gateway: str
    metrics: str
    payload_log: Path


@pytest.fixture
def quality_services(tmp_path: Path) -> Iterator[QualityServices]:
    """`textserve serve embedding classifier gateway` with drift detection in the embedding
    service and the classifier (references captured from the first REFERENCE_TEXTS inputs),
    feedback and the payload log (every request, to a file under tmp_path) in the classifier,
    and the gateway forwarding /v1/feedback to it."""
    from tests.support import ONNX_CACHE

    ports = {name: _free_port() for name in ("embedding", "classifier", "gateway", "metrics")}
    live = QualityServices(
        **{name: f"127.0.0.1:{port}" for name, port in ports.items()},
        payload_log=tmp_path / "payloads.jsonl",
    )
    drift = {
        "enabled": True,
        "capture_reference": REFERENCE_TEXTS,
        "window_size": DRIFT_WINDOW,
        "test_every_n": DRIFT_WINDOW // 3,
        "test_every_s": 0,
        "n_permutations": 99,
    }
    model = {"onnx_cache_dir": str(ONNX_CACHE)}
    config = {
        "log": {"level": "WARNING"},
        "metrics": {"host": "127.0.0.1", "port": ports["metrics"]},
        "cache": {"backend": "memory"},
        "embedding": {
            "server": _server(ports["embedding"]),
            "model": model,
            "batcher": {"max_queue_delay_ms": 2},
            "quality": {"drift": drift},
        },
        "classifier": {
            "server": _server(ports["classifier"]),
            "model": model,
            "quality": {
                "drift": drift,
                "feedback": {"enabled": True, "backend": "memory"},
                "payload_log": {"enabled": True, "path": str(live.payload_log), "sample_rate": 1.0},
            },
        },
        "gateway": {
            "host": "127.0.0.1",
            "port": ports["gateway"],
            "grace_period_s": 1,
            "embedding_address": live.embedding,
            "generation_address": "",  # not served here
            "classifier_address": live.classifier,
        },
    }
    with serve(tmp_path, QUALITY_SERVICES, config, live.gateway):
        yield live


def _drive_quality(
    live: QualityServices, reviews: list[tuple[str, str]], news: list[str], stop: threading.Event
) -> None:
    """The run: `reviews` (text, true label) first, classified and embedded (the drift
    references), then news sentences until stopped (drift). Every classified text of the reviews
    gets feedback; of each news batch, two texts get `neutral` (gRPC and HTTP), and every
    fourth batch one duplicate and one unknown request id as well."""
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc, embedding_pb2, embedding_pb2_grpc

    with (
        grpc.insecure_channel(live.classifier) as classifier_channel,
        grpc.insecure_channel(live.embedding) as embed_channel,
    ):
        classifier = classifier_pb2_grpc.ClassifierServiceStub(classifier_channel)
        embed = embedding_pb2_grpc.EmbeddingServiceStub(embed_channel)

        def classify_and_embed(texts: list[str]) -> str:
            """Both services see the texts; returns the x-request-id the classifier answered with."""
            request = classifier_pb2.ClassifyRequest(texts=texts)
            response, call = classifier.Classify.with_call(request, timeout=30)
            assert len(response.classifications) == len(texts)
            embed.Embed(embedding_pb2.EmbedRequest(texts=texts), timeout=30)
            return str(dict(call.initial_metadata())["x-request-id"])

        def feedback(request_id: str, index: int, label: str) -> int:
            request = classifier_pb2.FeedbackRequest(request_id=request_id, text_index=index, label=label)
            return int(classifier.Feedback(request, timeout=10).result)

        def http_feedback(request_id: str, index: int, label: str) -> str:
            body = json.dumps({"request_id": request_id, "index": index, "label": label}).encode()
            http = urllib.request.Request(
                f"http://{live.gateway}/v1/feedback", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(http, timeout=10) as response:
                return str(json.loads(response.read())["result"])

        joined = classifier_pb2.FeedbackResponse.RESULT_JOINED
        for start in range(0, len(reviews), BATCH):
            batch = reviews[start : start + BATCH]
            request_id = classify_and_embed([text for text, _ in batch])
            for index, (_, label) in enumerate(batch):
                assert feedback(request_id, index, label) == joined
        round_ = 0
        while not stop.is_set():
            start = round_ * BATCH % (len(news) - BATCH)
            request_id = classify_and_embed(news[start : start + BATCH])
            assert feedback(request_id, 0, "neutral") == joined
            assert http_feedback(request_id, 1, "neutral") == "joined"
            if round_ % 4 == 0:
                assert http_feedback(request_id, 0, "neutral") == "duplicate"
                try:
                    feedback(f"never-classified-{round_}", 0, "neutral")
                    raise AssertionError("feedback for an unknown request id was accepted")
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error
            round_ += 1
            stop.wait(0.05)


def _quality_without_data(prometheus: Prometheus) -> list[str]:
    """Quality panels (NOT_PRODUCED aside) without a finite value yet, and the drift signals
    not yet seen: the embedding's MMD and the classifier's label-mix flags, the alert pending."""
    missing = []
    for query in dashboard_queries():
        if query.source != QUALITY_DASHBOARD or query.title in NOT_PRODUCED:
            continue
        samples = prometheus.query(_concrete(query, SERVICES_WITH_QUALITY))
        if not any(math.isfinite(float(sample["value"][1])) for sample in samples):
            missing.append(_name(query))
    for service, detector in (("embedding", "mmd"), ("classifier", "label_mix")):
        flag = f'textserve_drift_detected{{service="{service}", detector="{detector}"}} == 1'
        if not prometheus.query(flag):
            missing.append(f"{service} {detector} drift flag")
    drift_alert = [rule for rule in prometheus.rules() if rule.get("name") == "TextserveDriftDetected"]
    if not any(rule.get("state") in ("pending", "firing") for rule in drift_alert):
        missing.append("TextserveDriftDetected pending")
    return missing


def test_live_quality_dashboard_after_drift_and_feedback(
    tmp_path: Path, quality_services: QualityServices, record_property: Callable[[str, object], None]
) -> None:
    """SST-2 reviews (with their true labels as feedback) make the drift references, CoNLL-2003
    news sentences then drift away from them while feedback keeps coming: every panel of the
    quality dashboard returns data on the live Prometheus, except NOT_PRODUCED."""
    from tests.shared_data import conll_sentences, sst2

    sentiment = {0: "negative", 1: "positive"}
    reviews = [(text, sentiment[label]) for label, text in sst2("dev")[:REFERENCE_TEXTS]]
    news = [sentence for sentence in conll_sentences("eng.testa") if len(sentence.split()) >= 6]
    stop = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            _drive_quality(quality_services, reviews, news, stop)
        except BaseException as error:  # surfaced below
            errors.append(error)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        with run_prometheus(tmp_path, quality_services.metrics) as prometheus:
            missing: list[str] = []

            def complete() -> bool:
                assert not errors, errors
                missing[:] = _quality_without_data(prometheus)
                return not missing

            try:
                _wait(complete, 60, "every quality panel to return data", interval=1)
            except AssertionError as error:
                raise AssertionError(f"{error}; still without: {missing}") from None
            checks = check_dashboards(
                prometheus, SERVICES_WITH_QUALITY, require_all=False, dashboard=QUALITY_DASHBOARD
            )
            check_rules(prometheus)
            _check_exported_names(quality_services.metrics)
    finally:
        stop.set()
        driver.join(timeout=30)
    assert not errors, errors
    text = report(checks, record_property)
    skipped = {c.query.title for c in checks if not c.checked}
    assert skipped == set(NOT_PRODUCED), f"panels without data are exactly NOT_PRODUCED:\n{text}"
    assert len(checks) > 20
    records = [json.loads(line) for line in quality_services.payload_log.read_text().splitlines()]
    assert records, "the payload log (sample_rate 1) is empty"
