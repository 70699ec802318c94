"""Builds the Grafana dashboards and syncs the monitoring files the chart ships.

Canonical copies live inside the chart, because Helm can only read files under the chart
directory (`.Files.Get`):
  deploy/helm/textserve/dashboards/*.json      written from the panel lists below
  deploy/helm/textserve/rules/textserve.rules.yaml   hand-written alerting rules
Plain copies for users without the chart (Grafana import, Prometheus rule_files):
  deploy/grafana/*.json, deploy/prometheus/textserve.rules.yaml

    python deploy/build_assets.py          # rewrite every file
    python deploy/build_assets.py --check  # exit 1 if a file is stale (CI; tests/deploy do the same)

Dashboards query only metrics defined in services/textserve/core/metrics.py and
services/textserve/quality/metrics.py (tests check this, and a live Prometheus test runs
every query). Variables: $datasource, $namespace (the Prometheus Operator's target label;
"All" also matches series without it), $release (the chart's ServiceMonitors add it from
app.kubernetes.io/instance; "All" matches series without it too), $service, $model and (the
model-quality and service dashboards) $version.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
CHART_DASHBOARDS = DEPLOY / "helm" / "textserve" / "dashboards"
CHART_RULES = DEPLOY / "helm" / "textserve" / "rules" / "textserve.rules.yaml"
GRAFANA_DIR = DEPLOY / "grafana"
PROMETHEUS_RULES = DEPLOY / "prometheus" / "textserve.rules.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SERVER_ERROR_CODES = "INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|5.."
"""gRPC codes (and gateway HTTP 5xx) that are the server's fault; overload included."""
NOT_PROBES = 'method!~"/health|/ready"'
"""The gateway counts its probe endpoints too; /ready answers 503 while a backend is down."""


@dataclass
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""


@dataclass
class Panel:
    """One panel; `width` is in Grafana's 24-column grid."""

    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    stack: bool = False
    min_zero: bool = True
    max_one: bool = False
    threshold: float | None = None
    """A dashed red line at this value (timeseries)."""


@dataclass
class Row:
    """A row of panels."""

    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Dashboard:
    """One dashboard file."""

    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: list[str]
    variable_queries: dict[str, str] = field(default_factory=dict)
    """Variable name -> the series selector its values come from, where not the default."""
    all_services: bool = False
    """$service offers "All" (and several at once): panels match it with service=~."""


def _sel(*matchers: str) -> str:
    """A label selector body: namespace and release always, plus the given matchers."""
    return ", ".join(('namespace=~"$namespace"', 'release=~"$release"', *matchers))


def _quantiles(
    metric: str, selector: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[Target]:
    group = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in qs
    ]


def _ratio_or_zero(numerator: str, denominator: str, by: str) -> str:
    """num/den by labels, 0 (not "no data") when the numerator has no series yet."""
    return (
        f"(sum by ({by}) ({numerator}) or 0 * sum by ({by}) ({denominator})) / sum by ({by}) ({denominator})"
    )


# --- Overview --------------------------------------------------------------------------
def overview() -> Dashboard:
    all_svc = _sel()
    requests = f"rate(textserve_requests_total{{{_sel(NOT_PROBES)}}}[{RATE}])"
    error_sel = _sel(f'code=~"{SERVER_ERROR_CODES}"', NOT_PROBES)
    errors = f"rate(textserve_requests_total{{{error_sel}}}[{RATE}])"
    hits = f"rate(textserve_cache_hits_total{{{all_svc}}}[{RATE}])"
    misses = f"rate(textserve_cache_misses_total{{{all_svc}}}[{RATE}])"
    rows = [
        Row(
            "Services",
            [
                Panel(
                    "Models loaded",
                    "Pods per service whose model is loaded and serving (textserve_model_loaded).",
                    [Target(f"sum by (service) (textserve_model_loaded{{{all_svc}}})", "{{service}}")],
                    kind="stat",
                    width=8,
                    height=5,
                ),
                Panel(
                    "Requests per second",
                    "All RPCs finished per second, every service.",
                    [Target(f"sum(rate(textserve_requests_total{{{all_svc}}}[{RATE}]))", "requests/s")],
                    unit="reqps",
                    kind="stat",
                    width=8,
                    height=5,
                ),
                Panel(
                    "Generated tokens per second",
                    "Tokens generated per second by the generation service.",
                    [
                        Target(
                            f"sum(rate(textserve_generation_tokens_total{{{all_svc}}}[{RATE}]))", "tokens/s"
                        )
                    ],
                    kind="stat",
                    width=8,
                    height=5,
                ),
            ],
        ),
        Row(
            "Traffic and errors",
            [
                Panel(
                    "Request rate by service",
                    "RPCs finished per second (gateway: HTTP requests).",
                    [Target(f"sum by (service) ({requests})", "{{service}}")],
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "Server error ratio by service",
                    "Share of requests that failed on the server side "
                    f"({SERVER_ERROR_CODES.replace('|', ', ')}).",
                    [Target(_ratio_or_zero(errors, requests, "service"), "{{service}}")],
                    unit="percentunit",
                ),
                Panel(
                    "p99 latency by service",
                    "99th percentile of successful RPC wall time.",
                    _quantiles("textserve_request_duration_seconds", _sel('code="OK"'), "service", (0.99,)),
                    unit="s",
                ),
                Panel(
                    "Requests in flight by service",
                    "RPCs being handled right now.",
                    [Target(f"sum by (service) (textserve_requests_in_flight{{{all_svc}}})", "{{service}}")],
                ),
                Panel(
                    "Refused calls by service and reason",
                    "RPCs refused with RESOURCE_EXHAUSTED per second, by reason: in_flight (the "
                    "admission bound) or queue_full (the batch or generation queue).",
                    [
                        Target(
                            "sum by (service, reason) "
                            f"(rate(textserve_requests_refused_total{{{all_svc}}}[{RATE}]))",
                            "{{service}} {{reason}}",
                        )
                    ],
                    unit="reqps",
                    stack=True,
                    width=24,
                ),
            ],
        ),
        Row(
            "Batching and cache",
            [
                Panel(
                    "Queue depth by service",
                    "Texts waiting in the batch queues (sum over pods).",
                    [Target(f"sum by (service) (textserve_queue_depth{{{all_svc}}})", "{{service}}")],
                ),
                Panel(
                    "Queue saturation by service",
                    "Fullest pod's queue depth / max_queue_size; 100% rejects.",
                    [
                        Target(
                            f"max by (service) (textserve_queue_depth{{{all_svc}}} / "
                            f"textserve_queue_capacity{{{all_svc}}})",
                            "{{service}}",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                ),
                Panel(
                    "Cache hit ratio by service",
                    "Response-cache lookups answered from the cache.",
                    [
                        Target(
                            f"sum by (service) ({hits}) / "
                            f"(sum by (service) ({hits}) + sum by (service) ({misses}))",
                            "{{service}}",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                ),
                Panel(
                    "Generation time to first token (p95)",
                    "95th percentile time from request to first token.",
                    _quantiles(
                        "textserve_generation_time_to_first_token_seconds", all_svc, "service", (0.95,)
                    ),
                    unit="s",
                ),
            ],
        ),
    ]
    return Dashboard(
        "textserve-overview",
        "textserve / overview",
        "Every textserve service at a glance: traffic, errors, latency, queues, cache, generation.",
        rows,
        ["datasource", "namespace", "release"],
    )


# --- One service -----------------------------------------------------------------------
def service() -> Dashboard:
    svc = _sel('service="$service"')
    svc_model = _sel('service="$service"', 'model=~"$model"')
    requests = f"rate(textserve_requests_total{{{svc}}}[{RATE}])"
    served_sel = _sel('service="$service"', NOT_PROBES)
    served = f"rate(textserve_requests_total{{{served_sel}}}[{RATE}])"
    error_sel = _sel('service="$service"', f'code=~"{SERVER_ERROR_CODES}"', NOT_PROBES)
    errors = f"rate(textserve_requests_total{{{error_sel}}}[{RATE}])"
    hits = f"rate(textserve_cache_hits_total{{{svc}}}[{RATE}])"
    misses = f"rate(textserve_cache_misses_total{{{svc}}}[{RATE}])"
    cache_errors = f"rate(textserve_cache_errors_total{{{svc}}}[{RATE}])"
    rows = [
        Row(
            "Requests",
            [
                Panel(
                    "Request rate by method",
                    "RPCs finished per second.",
                    [Target(f"sum by (method) ({requests})", "{{method}}")],
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "Responses by status code",
                    "RPCs finished per second by gRPC status code.",
                    [Target(f"sum by (code) ({requests})", "{{code}}")],
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "Server error ratio",
                    f"Share of requests failing on the server side ({SERVER_ERROR_CODES}).",
                    [Target(_ratio_or_zero(errors, served, "service"), "errors")],
                    unit="percentunit",
                ),
                Panel(
                    "Latency percentiles (OK)",
                    "Percentiles of successful RPC wall time, receipt to response.",
                    _quantiles("textserve_request_duration_seconds", _sel('service="$service"', 'code="OK"')),
                    unit="s",
                ),
                Panel(
                    "Mean latency by method",
                    "Mean RPC wall time by method (all status codes).",
                    [
                        Target(
                            f"sum by (method) (rate(textserve_request_duration_seconds_sum{{{svc}}}[{RATE}]))"
                            " / "
                            f"sum by (method) "
                            f"(rate(textserve_request_duration_seconds_count{{{svc}}}[{RATE}]))",
                            "{{method}}",
                        )
                    ],
                    unit="s",
                ),
                Panel(
                    "Requests in flight by method",
                    "RPCs being handled right now.",
                    [Target(f"sum by (method) (textserve_requests_in_flight{{{svc}}})", "{{method}}")],
                ),
                Panel(
                    "Refused calls by reason",
                    "RPCs refused with RESOURCE_EXHAUSTED and retry guidance, per second: in_flight "
                    "(the admission bound server.max_in_flight_requests) or queue_full (the batch or "
                    "generation queue). Clients retry them; a steady rate asks for more replicas.",
                    [
                        Target(
                            "sum by (method, reason) "
                            f"(rate(textserve_requests_refused_total{{{svc}}}[{RATE}]))",
                            "{{method}} {{reason}}",
                        )
                    ],
                    unit="reqps",
                    stack=True,
                    width=24,
                ),
            ],
        ),
        Row(
            "Batching",
            [
                Panel(
                    "Batch size",
                    "Texts per batch run by the model.",
                    [
                        *_quantiles("textserve_batch_size", svc_model, qs=(0.5, 0.95)),
                        Target(
                            f"sum(rate(textserve_batch_size_sum{{{svc_model}}}[{RATE}])) / "
                            f"sum(rate(textserve_batch_size_count{{{svc_model}}}[{RATE}]))",
                            "mean",
                        ),
                    ],
                ),
                Panel(
                    "Padded tokens per batch",
                    "Batch size x longest text, per batch.",
                    _quantiles("textserve_batch_tokens", svc_model, qs=(0.5, 0.95)),
                ),
                Panel(
                    "Queue time",
                    "Time a text waited for its batch to start.",
                    _quantiles("textserve_queue_duration_seconds", svc_model),
                    unit="s",
                ),
                Panel(
                    "Inference time per batch",
                    "Model forward time of one batch.",
                    _quantiles("textserve_inference_duration_seconds", svc_model),
                    unit="s",
                ),
                Panel(
                    "Queue depth and capacity",
                    "Texts waiting, against max_queue_size (sum over pods).",
                    [
                        Target(f"sum(textserve_queue_depth{{{svc_model}}})", "waiting"),
                        Target(f"sum(textserve_queue_capacity{{{svc_model}}})", "capacity"),
                    ],
                ),
                Panel(
                    "Dropped and rejected texts",
                    "Rejected: queue full (RESOURCE_EXHAUSTED). Dropped: cancelled "
                    "by the client or past their deadline before their batch ran.",
                    [
                        Target(
                            f"sum(rate(textserve_batcher_rejected_total{{{svc_model}}}[{RATE}]))", "rejected"
                        ),
                        Target(
                            f"sum by (reason) (rate(textserve_batcher_dropped_total{{{svc_model}}}[{RATE}]))",
                            "dropped: {{reason}}",
                        ),
                    ],
                    unit="cps",
                ),
                Panel(
                    "Input tokens per second",
                    "Tokens processed (after truncation, special tokens included).",
                    [Target(f"sum(rate(textserve_input_tokens_total{{{svc_model}}}[{RATE}]))", "tokens/s")],
                ),
                Panel(
                    "Batch budget in force",
                    "max_batch_size and max_batch_tokens per pod (configured or tuned).",
                    [
                        Target(
                            f"max by (model) (textserve_batch_budget_size{{{svc_model}}})",
                            "max batch size {{model}}",
                        ),
                        Target(
                            f"max by (model) (textserve_batch_budget_tokens{{{svc_model}}})",
                            "max batch tokens {{model}}",
                        ),
                    ],
                ),
            ],
        ),
        Row(
            "Cache",
            [
                Panel(
                    "Cache hit ratio",
                    "Lookups answered from the response cache.",
                    [Target(f"sum({hits}) / (sum({hits}) + sum({misses}))", "hit ratio")],
                    unit="percentunit",
                    max_one=True,
                    width=8,
                ),
                Panel(
                    "Cache operations",
                    "Hits, misses and failed or timed-out operations per second "
                    "(errors are served from the model: fail open).",
                    [
                        Target(f"sum({hits})", "hits"),
                        Target(f"sum({misses})", "misses"),
                        Target(f"sum({cache_errors})", "errors"),
                    ],
                    unit="ops",
                    width=8,
                ),
                Panel(
                    "Cache read and write time (p99)",
                    "99th percentile of one batched cache read / write.",
                    [
                        *[
                            Target(t.expr, "read " + t.legend)
                            for t in _quantiles("textserve_cache_read_duration_seconds", svc, qs=(0.99,))
                        ],
                        *[
                            Target(t.expr, "write " + t.legend)
                            for t in _quantiles("textserve_cache_write_duration_seconds", svc, qs=(0.99,))
                        ],
                    ],
                    unit="s",
                    width=8,
                ),
            ],
        ),
        Row(
            "Model",
            [
                Panel(
                    "Model loaded",
                    "1 once the model is loaded and serving, per pod.",
                    [Target(f"textserve_model_loaded{{{svc_model}}}", "{{model}} {{instance}}")],
                    max_one=True,
                    width=8,
                ),
                Panel(
                    "Model load time",
                    "Time the last model load took (including any ONNX export), per pod.",
                    [
                        Target(
                            f"textserve_model_load_duration_seconds{{{svc_model}}}", "{{model}} {{instance}}"
                        )
                    ],
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Precision in force",
                    "Loaded models per numeric precision (fp32, fp16, bf16, int8), counted over "
                    "pods (and versions, where a model serves several): what the service really "
                    "runs after device and backend fallbacks (textserve_model_precision_info).",
                    [
                        Target(
                            "count by (model, precision) "
                            f"(textserve_model_precision_info{{{svc_model}}} > 0)",
                            "{{model}} {{precision}}",
                        )
                    ],
                    kind="stat",
                    width=8,
                ),
            ],
        ),
        _versions_row(),
    ]
    rows.append(_pods_row(served))
    return Dashboard(
        "textserve-service",
        "textserve / service",
        "One textserve service in depth: requests, latency, batching, queue, cache, model, and "
        "the versions of a model side by side (traffic split, latency, errors, shadow agreement).",
        rows,
        ["datasource", "namespace", "release", "service", "model", "version"],
        variable_queries={"version": MODEL_VERSIONS},
    )


# --- Versions of a model (repository, weighted split, shadow) --------------------------
SHADOW_AGREEMENT_ALERT = 0.9
"""The dashed line of the shadow-agreement panel: TextserveShadowAgreementLow's threshold (tests check)."""
MODEL_VERSIONS = (
    'textserve_model_requests_total{namespace=~"$namespace", service="$service", model=~"$model"}'
)
"""Where the service dashboard's $version comes from: versions that served requests."""
_BY_VERSION = "model, version"
_VERSION = "{{model}} {{version}}"


def _versions_row() -> Row:
    """Versions of $model side by side: traffic share against routing weight, state, latency
    and errors per version, and the shadow's agreement, latency and outcomes."""
    ver = _sel('service="$service"', 'model=~"$model"', 'version=~"$version"')
    every_version = _sel('service="$service"', 'model=~"$model"')
    served = f"rate(textserve_model_requests_total{{{ver}}}[{RATE}])"
    served_all = f"rate(textserve_model_requests_total{{{every_version}}}[{RATE}])"
    errors_sel = _sel(
        'service="$service"', 'model=~"$model"', 'version=~"$version"', f'code=~"{SERVER_ERROR_CODES}"'
    )
    errors = f"rate(textserve_model_requests_total{{{errors_sel}}}[{RATE}])"
    weights = f"max by ({_BY_VERSION}) (textserve_routing_weight{{{ver}}})"
    weights_all = f"max by ({_BY_VERSION}) (textserve_routing_weight{{{every_version}}})"

    def by_version(metric: str, qs: tuple[float, ...]) -> list[Target]:
        return [
            Target(
                f"histogram_quantile({q}, sum by ({_BY_VERSION}, le) "
                f"(rate({metric}_bucket{{{ver}}}[{RATE}])))",
                f"{_VERSION} p{round(q * 100)}",
            )
            for q in qs
        ]

    return Row(
        "Versions (A/B)",
        [
            Panel(
                "Traffic share by version",
                "Share of the model's requests each version served (textserve_model_requests_total; "
                "pinned requests included). With a weighted split it follows the routing weights; "
                "a version that takes no share is not READY or has weight 0.",
                [
                    Target(
                        f"sum by ({_BY_VERSION}) ({served}) / on (model) group_left "
                        f"sum by (model) ({served_all})",
                        _VERSION,
                    )
                ],
                unit="percentunit",
                max_one=True,
                stack=True,
                width=8,
            ),
            Panel(
                "Routing weight by version",
                "Each version's weight as a share of the model's weights (textserve_routing_weight, "
                "highest over pods): what `textserve models weights` or the chart's routing "
                "ConfigMap set. Pods that disagree (a ConfigMap update still on its way) show as "
                "a step.",
                [Target(f"{weights} / on (model) group_left sum by (model) ({weights_all})", _VERSION)],
                unit="percentunit",
                max_one=True,
                width=8,
            ),
            Panel(
                "Version state",
                "Pods per version and state (READY, LOADING, UNLOADING, UNAVAILABLE, FAILED; "
                "textserve_model_version_state). `textserve models list` gives a FAILED version's "
                "reason.",
                [
                    Target(
                        f"sum by ({_BY_VERSION}, state) (textserve_model_version_state{{{ver}}})",
                        f"{_VERSION} {{{{state}}}}",
                    )
                ],
                stack=True,
                width=8,
            ),
            Panel(
                "Latency by version (p50, p99)",
                "Request wall time per version (textserve_model_request_duration_seconds): the "
                "candidate against the version in production, same traffic mix.",
                by_version("textserve_model_request_duration_seconds", (0.5, 0.99)),
                unit="s",
            ),
            Panel(
                "Server error ratio by version",
                f"Share of each version's requests failing on the server side ({SERVER_ERROR_CODES}).",
                [Target(_ratio_or_zero(errors, served, _BY_VERSION), _VERSION)],
                unit="percentunit",
            ),
            Panel(
                "Shadow agreement",
                "How often a shadow version agrees with the primary on the same request "
                "(textserve_shadow_agreement): cosine of the embeddings, top-label agreement of "
                "the classifier, exact match of greedy tokens for generation. Mean and 10th "
                "percentile; dashed line: the TextserveShadowAgreementLow threshold "
                f"({SHADOW_AGREEMENT_ALERT}).",
                [
                    Target(
                        f"sum by ({_BY_VERSION}) (rate(textserve_shadow_agreement_sum{{{ver}}}[{RATE}])) / "
                        f"sum by ({_BY_VERSION}) (rate(textserve_shadow_agreement_count{{{ver}}}[{RATE}]))",
                        f"{_VERSION} mean",
                    ),
                    *by_version("textserve_shadow_agreement", (0.1,)),
                ],
                unit="percentunit",
                max_one=True,
                threshold=SHADOW_AGREEMENT_ALERT,
                width=8,
            ),
            Panel(
                "Shadow latency (p50, p99)",
                "Time the shadow version took per mirrored request (textserve_shadow_latency_seconds). "
                "It runs after the primary answered, off the client's deadline: compare it with "
                "the latency by version above to judge the candidate's speed.",
                by_version("textserve_shadow_latency_seconds", (0.5, 0.99)),
                unit="s",
                width=8,
            ),
            Panel(
                "Shadow requests by outcome",
                "Mirrored requests per second: compared with the primary, failed on the shadow "
                "(never seen by the client), or skipped (shadow busy or not READY).",
                [
                    Target(
                        f"sum by ({_BY_VERSION}, outcome) "
                        f"(rate(textserve_shadow_requests_total{{{ver}}}[{RATE}]))",
                        f"{_VERSION} {{{{outcome}}}}",
                    )
                ],
                unit="reqps",
                stack=True,
                width=8,
            ),
        ],
    )


# --- Pods and resources (kube-state-metrics, cAdvisor, DCGM exporter) ------------------
# These series are not textserve's and carry no `release` label: they are matched by the
# chart's object names (<release>[-textserve]-<service>, pods <deployment>-<hash>-<hash>,
# container textserve-<service>).
_NS = 'namespace=~"$namespace"'
_DEPLOYMENT = f'{_NS}, deployment=~"$release.*-$service"'
_HPA = f'{_NS}, horizontalpodautoscaler=~"$release.*-$service"'
_POD_SEL = f'{_NS}, pod=~"$release.*-$service-[^-]+-[^-]+"'
_CONTAINER = f'{_POD_SEL}, container="textserve-$service"'


def _against_limit(usage: str, resource: str) -> str:
    limit = f'kube_pod_container_resource_limits{{{_CONTAINER}, resource="{resource}"}}'
    return f"sum by (pod) ({usage}) / sum by (pod) ({limit})"


def _pods_row(served: str) -> Row:
    """Replicas, restarts, CPU/memory against limits, GPU use and per-pod traffic of $service."""
    cpu = f"rate(container_cpu_usage_seconds_total{{{_CONTAINER}}}[{RATE}])"
    memory = f"container_memory_working_set_bytes{{{_CONTAINER}}}"
    return Row(
        "Pods and resources",
        [
            Panel(
                "Ready vs desired replicas",
                "Ready pods of the Deployment against the replicas it wants (kube-state-metrics).",
                [
                    Target(f"sum(kube_deployment_status_replicas_ready{{{_DEPLOYMENT}}})", "ready"),
                    Target(f"sum(kube_deployment_spec_replicas{{{_DEPLOYMENT}}})", "desired"),
                ],
                width=8,
            ),
            Panel(
                "HPA replicas",
                "Current, desired and maximum replicas of the HorizontalPodAutoscaler, when one exists.",
                [
                    Target(f"sum(kube_horizontalpodautoscaler_status_current_replicas{{{_HPA}}})", "current"),
                    Target(f"sum(kube_horizontalpodautoscaler_status_desired_replicas{{{_HPA}}})", "desired"),
                    Target(f"sum(kube_horizontalpodautoscaler_spec_max_replicas{{{_HPA}}})", "max"),
                ],
                width=8,
            ),
            Panel(
                "Container restarts",
                "Restarts of the service container per pod over the last hour (OOM kills, failed probes).",
                [
                    Target(
                        "sum by (pod) "
                        f"(increase(kube_pod_container_status_restarts_total{{{_CONTAINER}}}[1h]))",
                        "{{pod}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Request rate by pod",
                "RPCs finished per second per pod: new replicas should take their share within the "
                "maximum connection age.",
                [Target(f"sum by (pod) ({served})", "{{pod}}")],
                unit="reqps",
                stack=True,
                width=8,
            ),
            Panel(
                "CPU against limit",
                "CPU used per pod / its CPU limit (cAdvisor, kube-state-metrics); no data without a limit.",
                [Target(_against_limit(cpu, "cpu"), "{{pod}}")],
                unit="percentunit",
                width=8,
            ),
            Panel(
                "Memory against limit",
                "Working-set memory per pod / its memory limit; the kernel OOM-kills the container at 100%.",
                [Target(_against_limit(memory, "memory"), "{{pod}}")],
                unit="percentunit",
                width=8,
            ),
            Panel(
                "GPU utilisation",
                "GPU busy time per pod (DCGM exporter with pod attribution; no data without it).",
                [Target(f"avg by (pod) (DCGM_FI_DEV_GPU_UTIL{{{_POD_SEL}}})", "{{pod}}")],
                unit="percent",
            ),
            Panel(
                "GPU memory used",
                "Framebuffer memory in use per pod (DCGM exporter), against the GPU's total.",
                [
                    Target(f"sum by (pod) (DCGM_FI_DEV_FB_USED{{{_POD_SEL}}})", "{{pod}} used"),
                    Target(
                        f"sum by (pod) (DCGM_FI_DEV_FB_USED{{{_POD_SEL}}}"
                        f" + DCGM_FI_DEV_FB_FREE{{{_POD_SEL}}})",
                        "{{pod}} total",
                    ),
                ],
                unit="decmbytes",
            ),
        ],
    )


# --- Generation ------------------------------------------------------------------------
def generation() -> Dashboard:
    gen = _sel('service="generation"', 'model=~"$model"')
    req = _sel('service="generation"')
    gateway = _sel('service="gateway"')
    rows = [
        Row(
            "Throughput",
            [
                Panel(
                    "Generated tokens per second",
                    "Tokens generated per second (sum over pods).",
                    [
                        Target(
                            f"sum by (model) (rate(textserve_generation_tokens_total{{{gen}}}[{RATE}]))",
                            "{{model}}",
                        )
                    ],
                    width=8,
                ),
                Panel(
                    "Running and waiting sequences",
                    "Sequences in the decode batch, and waiting for admission.",
                    [
                        Target(f"sum(textserve_generation_running_sequences{{{gen}}})", "running"),
                        Target(f"sum(textserve_generation_waiting_sequences{{{gen}}})", "waiting"),
                    ],
                    width=8,
                ),
                Panel(
                    "KV cache used",
                    "KV-cache tokens reserved by running sequences / the KV budget.",
                    [
                        Target(
                            f"sum(textserve_generation_kv_tokens_used{{{gen}}}) / "
                            f"sum(textserve_generation_kv_tokens_capacity{{{gen}}})",
                            "used",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=8,
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Time to first token",
                    "Time from receiving a request to its first generated token.",
                    _quantiles("textserve_generation_time_to_first_token_seconds", gen),
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Inter-token latency",
                    "Time between consecutive tokens of one sequence.",
                    _quantiles("textserve_generation_inter_token_seconds", gen),
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Request duration (OK)",
                    "Whole RPC (stream) wall time of successful requests.",
                    _quantiles(
                        "textserve_request_duration_seconds", _sel('service="generation"', 'code="OK"')
                    ),
                    unit="s",
                    width=8,
                ),
            ],
        ),
        Row(
            "Prefix cache and structured output",
            [
                Panel(
                    "Prompt tokens reused from the prefix cache",
                    "Share of prompt tokens whose keys and values came from the prefix cache (not computed).",
                    [
                        Target(
                            "sum(rate(textserve_generation_prefix_cache_tokens_saved_total"
                            f"{{{gen}}}[{RATE}])) / sum(rate(textserve_input_tokens_total{{{gen}}}[{RATE}]))",
                            "reused",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=6,
                ),
                Panel(
                    "Prefix cache size",
                    "KV-cache tokens the prefix cache holds / the KV budget (evicted when sequences "
                    "need room).",
                    [
                        Target(
                            f"sum(textserve_generation_prefix_cache_tokens{{{gen}}}) / "
                            f"sum(textserve_generation_kv_tokens_capacity{{{gen}}})",
                            "held",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=6,
                ),
                Panel(
                    "Structured output requests by kind",
                    "Requests with a response format (json_object, json_schema, regex) per second.",
                    [
                        Target(
                            "sum by (kind) (rate(textserve_generation_constrained_requests_total"
                            f"{{{gen}}}[{RATE}]))",
                            "{{kind}}",
                        )
                    ],
                    unit="reqps",
                    stack=True,
                    width=6,
                ),
                Panel(
                    "Grammar compile time",
                    "Time to compile a response format that is not in the grammar cache.",
                    _quantiles("textserve_generation_grammar_compile_seconds", gen, qs=(0.5, 0.99)),
                    unit="s",
                    width=6,
                ),
            ],
        ),
        Row(
            "Requests",
            [
                Panel(
                    "Finished sequences by reason",
                    "Sequences finished per second: length, stop, eos, cancelled.",
                    [
                        Target(
                            f"sum by (reason) (rate(textserve_generation_finished_total{{{gen}}}[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                    unit="cps",
                    stack=True,
                ),
                Panel(
                    "Responses by method and status code",
                    "Generation RPCs finished per second.",
                    [
                        Target(
                            f"sum by (method, code) (rate(textserve_requests_total{{{req}}}[{RATE}]))",
                            "{{method}} {{code}}",
                        )
                    ],
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "Gateway requests by status code",
                    "HTTP requests through the OpenAI-compatible gateway.",
                    [
                        Target(
                            f"sum by (code) (rate(textserve_requests_total{{{gateway}}}[{RATE}]))", "{{code}}"
                        )
                    ],
                    unit="reqps",
                    stack=True,
                ),
            ],
        ),
    ]
    return Dashboard(
        "textserve-generation",
        "textserve / generation",
        "The generation service: tokens per second, time to first token, inter-token latency, "
        "continuous batching and KV cache.",
        rows,
        ["datasource", "namespace", "release", "model"],
    )


# --- Model quality ---------------------------------------------------------------------
DRIFT_SIGNIFICANCE = 0.05
"""The dashed line of the p-value panel: quality.drift.significance's default (tests check)."""
LIVE_ACCURACY_ALERT = 0.8
"""The dashed line of the live-accuracy panel: TextserveLiveAccuracyLow's threshold (tests check)."""
LIVE_ACCURACY_MIN_PAIRS = 50
"""Joined pairs TextserveLiveAccuracyLow needs before it judges (tests check)."""
QUALITY_SERIES = (
    '__name__=~"textserve_predictions_total|textserve_embedding_norm_count'
    '|textserve_text_tokens_count|textserve_entities_total"'
)
"""Series every quality-instrumented service exports: where $service, $model and $version come from."""
_PER_VERSION = "model, version"
_VERSION_LEGEND = "{{model}} {{version}}"


def _version_quantiles(metric: str, selector: str, qs: tuple[float, ...]) -> list[Target]:
    return [
        Target(
            f"histogram_quantile({q}, sum by ({_PER_VERSION}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{_VERSION_LEGEND} p{round(q * 100)}",
        )
        for q in qs
    ]


def quality() -> Dashboard:
    sel = _sel('service=~"$service"', 'model=~"$model"', 'version=~"$version"')
    by_service = _sel('service=~"$service"')
    predictions = f"rate(textserve_predictions_total{{{sel}}}[{RATE}])"
    confidence_count = f"rate(textserve_prediction_confidence_count{{{sel}}}[{RATE}])"
    low_confidence = f'rate(textserve_prediction_confidence_bucket{{{sel}, le="0.6"}}[{RATE}])'
    pairs = f"textserve_live_window_pairs{{{sel}}}"
    joined_sel = _sel('service=~"$service"', 'model=~"$model"', 'version=~"$version"', 'result="joined"')
    rows = [
        Row(
            "Predictions",
            [
                Panel(
                    "Predictions per second by label",
                    "Texts classified per second by predicted (top) label, per model version "
                    "(textserve_predictions_total).",
                    [
                        Target(
                            f"sum by ({_PER_VERSION}, label) ({predictions})",
                            f"{_VERSION_LEGEND} {{{{label}}}}",
                        )
                    ],
                    unit="cps",
                    stack=True,
                    width=8,
                ),
                Panel(
                    "Label mix",
                    "Share of each predicted label among a model version's predictions. A mix that "
                    "moves away from the training data's is what the label_mix drift test flags.",
                    [
                        Target(
                            f"sum by ({_PER_VERSION}, label) ({predictions}) / on ({_PER_VERSION}) "
                            f"group_left sum by ({_PER_VERSION}) ({predictions})",
                            f"{_VERSION_LEGEND} {{{{label}}}}",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=8,
                ),
                Panel(
                    "Low-confidence share",
                    "Share of classified texts whose top score is at most 0.6: a rising share means "
                    "inputs the model is unsure about.",
                    [
                        Target(
                            _ratio_or_zero(low_confidence, confidence_count, _PER_VERSION),
                            _VERSION_LEGEND,
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=8,
                ),
                Panel(
                    "Confidence percentiles",
                    "10th and 50th percentile of the top score per model version "
                    "(textserve_prediction_confidence); the low tail moves first.",
                    _version_quantiles("textserve_prediction_confidence", sel, (0.1, 0.5)),
                    unit="percentunit",
                    max_one=True,
                ),
                Panel(
                    "Confidence distribution",
                    "Classified texts per confidence bucket over time (all selected versions).",
                    [
                        Target(
                            "sum by (le) "
                            f"(increase(textserve_prediction_confidence_bucket{{{sel}}}[{RATE}]))",
                            "{{le}}",
                        )
                    ],
                    unit="percentunit",
                    kind="heatmap",
                ),
            ],
        ),
        Row(
            "Drift",
            [
                Panel(
                    "Drift p-value by detector",
                    "p-value of the latest test of the recent window against the reference, per "
                    "detector (mmd or projection_ks on embeddings, label_mix and confidence on "
                    "classifier outputs); the lowest over pods. Drift is flagged below the "
                    f"configured significance (dashed line: the default, {DRIFT_SIGNIFICANCE}).",
                    [
                        Target(
                            f"min by ({_PER_VERSION}, detector) (textserve_drift_p_value{{{sel}}})",
                            f"{_VERSION_LEGEND} {{{{detector}}}}",
                        )
                    ],
                    unit="none",
                    max_one=True,
                    threshold=DRIFT_SIGNIFICANCE,
                ),
                Panel(
                    "Pods flagging drift",
                    "Pods whose latest test of a detector flagged drift (textserve_drift_detected); "
                    "TextserveDriftDetected fires when a flag stays up for 15 minutes.",
                    [
                        Target(
                            f"sum by ({_PER_VERSION}, detector) (textserve_drift_detected{{{sel}}})",
                            f"{_VERSION_LEGEND} {{{{detector}}}}",
                        )
                    ],
                    width=6,
                ),
                Panel(
                    "Drift test CPU time",
                    "CPU time of one drift test per detector, off the request path (p50, p99).",
                    _quantiles("textserve_drift_test_cpu_seconds", by_service, "detector", (0.5, 0.99)),
                    unit="s",
                    width=6,
                ),
            ],
        ),
        Row(
            "Live accuracy (feedback)",
            [
                Panel(
                    "Live accuracy by version",
                    "Accuracy over each pod's sliding window of joined (truth, prediction) pairs, "
                    "weighted by the pairs of each pod. Dashed line: the TextserveLiveAccuracyLow "
                    "threshold.",
                    [
                        Target(
                            f"sum by ({_PER_VERSION}) (textserve_live_accuracy{{{sel}}} * {pairs}) / "
                            f"sum by ({_PER_VERSION}) ({pairs})",
                            _VERSION_LEGEND,
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    threshold=LIVE_ACCURACY_ALERT,
                    width=8,
                ),
                Panel(
                    "Feedback accuracy, last hour",
                    "Correct / joined feedback over the last hour from the counters (every pod, "
                    "restarts included): the figure `textserve ab-report` compares between versions.",
                    [
                        Target(
                            _ratio_or_zero(
                                f"increase(textserve_feedback_correct_total{{{sel}}}[1h])",
                                f"increase(textserve_feedback_total{{{joined_sel}}}[1h])",
                                _PER_VERSION,
                            ),
                            _VERSION_LEGEND,
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                    width=8,
                ),
                Panel(
                    "Joined pairs in the window",
                    "Pairs behind the live accuracy (sum over pods). Dashed line: the pairs "
                    "TextserveLiveAccuracyLow needs before it judges.",
                    [Target(f"sum by ({_PER_VERSION}) ({pairs})", _VERSION_LEGEND)],
                    threshold=LIVE_ACCURACY_MIN_PAIRS,
                    width=8,
                ),
                Panel(
                    "Live recall by class",
                    "Recall of each true label over the window of joined pairs (mean over pods): "
                    "which class the model misses.",
                    [
                        Target(
                            f"avg by ({_PER_VERSION}, label) (textserve_live_recall{{{sel}}})",
                            f"{_VERSION_LEGEND} {{{{label}}}}",
                        )
                    ],
                    unit="percentunit",
                    max_one=True,
                ),
                Panel(
                    "Feedback by result",
                    "Ground truth received per second: joined with its prediction, unknown (id never "
                    "seen or expired: NOT_FOUND) or duplicate. Not filtered by model or version, "
                    "which an unknown id does not have.",
                    [
                        Target(
                            f"sum by (result) (rate(textserve_feedback_total{{{by_service}}}[{RATE}]))",
                            "{{result}}",
                        )
                    ],
                    unit="cps",
                    stack=True,
                ),
            ],
        ),
        Row(
            "Inputs",
            [
                Panel(
                    "Embedding norm",
                    "L2 norm of each embedding before normalisation (p5, p50, p95): empty, "
                    "repeated or foreign-language texts move it.",
                    _version_quantiles("textserve_embedding_norm", sel, (0.05, 0.5, 0.95)),
                    unit="none",
                    width=6,
                ),
                Panel(
                    "Text length in tokens",
                    "Tokens of each input text after truncation (p50, p95, p99).",
                    _version_quantiles("textserve_text_tokens", sel, (0.5, 0.95, 0.99)),
                    width=6,
                ),
                Panel(
                    "Entities per second by type",
                    "Entities found by token classification (NER) per second, by type.",
                    [
                        Target(
                            f"sum by ({_PER_VERSION}, entity_type) "
                            f"(rate(textserve_entities_total{{{sel}}}[{RATE}]))",
                            f"{_VERSION_LEGEND} {{{{entity_type}}}}",
                        )
                    ],
                    unit="cps",
                    stack=True,
                    width=6,
                ),
                Panel(
                    "Payload log records",
                    "Records written to the opt-in payload log per second, by kind. Their texts are "
                    "personal data; no data here means the log is off.",
                    [
                        Target(
                            "sum by (service, kind) "
                            f"(rate(textserve_payload_log_records_total{{{by_service}}}[{RATE}]))",
                            "{{service}} {{kind}}",
                        )
                    ],
                    unit="cps",
                    width=6,
                ),
            ],
        ),
    ]
    version_source = f'{QUALITY_SERIES}, namespace=~"$namespace"'
    return Dashboard(
        "textserve-quality",
        "textserve / model quality",
        "Whether the answers are still right: label mix and confidence, drift tests against the "
        "reference, live accuracy and recall from feedback, and input statistics, per model version.",
        rows,
        ["datasource", "namespace", "release", "service", "model", "version"],
        variable_queries={
            "service": f"{{{version_source}}}",
            "model": f'{{{version_source}, service=~"$service"}}',
            "version": f'{{{version_source}, service=~"$service", model=~"$model"}}',
        },
        all_services=True,
    )


# --- JSON ------------------------------------------------------------------------------
def _variable(name: str, dashboard: Dashboard) -> dict[str, Any]:
    if name == "datasource":
        return {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        }
    queries = {
        "namespace": ("Namespace", "label_values(textserve_requests_total, namespace)"),
        "release": ("Release", 'label_values(textserve_requests_total{namespace=~"$namespace"}, release)'),
        "service": ("Service", 'label_values(textserve_requests_total{namespace=~"$namespace"}, service)'),
        "model": ("Model", 'label_values(textserve_model_loaded{namespace=~"$namespace"}, model)'),
    }
    if name in dashboard.variable_queries:
        label, query = name.capitalize(), f"label_values({dashboard.variable_queries[name]}, {name})"
    else:
        label, query = queries[name]
    all_of = name != "service" or dashboard.all_services
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-query"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "multi": all_of,
        "includeAll": all_of,
        "allValue": ".*" if all_of else None,
        "current": {},
        "options": [],
        "regex": "",
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.min_zero:
        defaults["min"] = 0
    if panel.max_one:
        defaults["max"] = 1
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [
            {
                "refId": refs[index],
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend or "__auto",
                "range": True,
            }
            for index, target in enumerate(panel.targets)
        ],
    }
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        if panel.threshold is not None:
            defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [
                    {"color": "transparent", "value": None},
                    {"color": "red", "value": panel.threshold},
                ],
            }
        body["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "heatmap":
        # Prometheus buckets as they are (no re-bucketing); one row per `le`.
        for target in body["targets"]:
            target["format"] = "heatmap"
        defaults["unit"] = "short"  # the cells count texts; `unit` is the buckets' (y axis)
        body["options"] = {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5},
            "rowsFrame": {"layout": "le"},
            "yAxis": {"axisPlacement": "left", "unit": panel.unit},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        }
    else:
        body["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    body["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return body


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of a dashboard (rows laid out top to bottom)."""
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["textserve"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "links": [
            {
                "title": "textserve",
                "type": "dashboards",
                "tags": ["textserve"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": [_variable(name, dashboard) for name in dashboard.variables]},
        "panels": panels,
    }


DASHBOARDS = (overview, service, generation, quality)


def rendered_files() -> dict[Path, str]:
    """Every file this script owns, with the text it must hold."""
    files: dict[Path, str] = {}
    for build in DASHBOARDS:
        dashboard = build()
        text = json.dumps(dashboard_json(dashboard), indent=2, ensure_ascii=False) + "\n"
        files[CHART_DASHBOARDS / f"{dashboard.uid}.json"] = text
        files[GRAFANA_DIR / f"{dashboard.uid}.json"] = text
    files[PROMETHEUS_RULES] = CHART_RULES.read_text()
    return files


def stale_files() -> list[Path]:
    """Files whose content differs from what this script writes (or that are missing, or extra)."""
    files = rendered_files()
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    for directory in (CHART_DASHBOARDS, GRAFANA_DIR):
        stale += [path for path in sorted(directory.glob("*.json")) if path not in files]
    return stale


def main(argv: list[str] | None = None) -> int:
    """Writes (or with --check, verifies) every dashboard and the rules copy."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(DEPLOY.parent)} (run python deploy/build_assets.py)")
        return 1 if stale else 0
    for path, text in rendered_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(DEPLOY.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
