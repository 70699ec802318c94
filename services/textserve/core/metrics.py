"""Every Prometheus metric textserve exports, defined once on one registry.

Names start with `textserve_` and use base units (`_seconds`, `_tokens`, `_total`).
Labels are limited to service, model, version (the model version, lifecycle/; "1" without a
model repository), method, code (plus `reason`/`result` on the few counters that need
them); request data never goes into a label. Dashboards and alert
rules in deploy/ may only use names defined here (tests check this against a live scrape).
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# --- RPCs -------------------------------------------------------------------------------
REQUESTS = Counter(
    "textserve_requests_total",
    "RPCs finished, by service, method and gRPC status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "textserve_request_duration_seconds",
    "RPC wall time from receipt to response, by service, method and status code.",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "textserve_requests_in_flight",
    "RPCs being handled now.",
    ["service", "method"],
    registry=REGISTRY,
)
INPUT_TOKENS = Counter(
    "textserve_input_tokens_total",
    "Input tokens processed (after truncation, special tokens included).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
ENTITY_WINDOWS = Histogram(
    "textserve_entity_windows",
    "Model windows one text was split into for entity extraction (1: the text fits one window).",
    ["service", "model"],
    buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "textserve_auth_failures_total",
    "RPCs rejected by bearer-token auth, by gRPC status code (UNAUTHENTICATED, PERMISSION_DENIED).",
    ["service", "code"],
    registry=REGISTRY,
)
REQUESTS_REFUSED = Counter(
    "textserve_requests_refused_total",
    "RPCs refused with RESOURCE_EXHAUSTED and retry guidance, by reason: in_flight (the admission bound "
    "server.max_in_flight_requests), queue_full (the batch or generation queue).",
    ["service", "method", "reason"],
    registry=REGISTRY,
)

# --- Batcher ----------------------------------------------------------------------------
QUEUE_DURATION = Histogram(
    "textserve_queue_duration_seconds",
    "Time a text waited in the batch queue before its batch started.",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "textserve_batch_size",
    "Texts per batch run by the model.",
    ["service", "model", "version"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_TOKENS = Histogram(
    "textserve_batch_tokens",
    "Padded tokens per batch (batch size x longest text).",
    ["service", "model", "version"],
    buckets=_TOKEN_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_DURATION = Histogram(
    "textserve_inference_duration_seconds",
    "Model forward time of one batch.",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "textserve_queue_depth",
    "Texts waiting in the batch queue.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
QUEUE_CAPACITY = Gauge(
    "textserve_queue_capacity",
    "Most texts the batch queue holds (max_queue_size).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
BATCHER_DROPPED = Counter(
    "textserve_batcher_dropped_total",
    "Texts taken out of the queue without being computed, by reason (cancelled, expired).",
    ["service", "model", "version", "reason"],
    registry=REGISTRY,
)
BATCHER_REJECTED = Counter(
    "textserve_batcher_rejected_total",
    "Texts rejected at admission because the queue was full.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
BATCH_BUDGET_TOKENS = Gauge(
    "textserve_batch_budget_tokens",
    "max_batch_tokens in force (configured or tuned).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
BATCH_BUDGET_SIZE = Gauge(
    "textserve_batch_budget_size",
    "max_batch_size in force (configured or tuned).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
# The tuner's measured curve. text_tokens and batch_size are the tuner's grid values
# (bounded by tuning.text_tokens x tuning.batch_sizes, about 35 series), never request data.
TUNING_TEXTS_PER_SECOND = Gauge(
    "textserve_tuning_texts_per_second",
    "Measured throughput of one batch size at one text length (the tuner's curve).",
    ["service", "model", "version", "text_tokens", "batch_size"],
    registry=REGISTRY,
)
TUNING_BATCH_LATENCY = Gauge(
    "textserve_tuning_batch_latency_seconds",
    "Measured median forward time of one batch size at one text length (the tuner's curve).",
    ["service", "model", "version", "text_tokens", "batch_size"],
    registry=REGISTRY,
)
TUNING_PREDICTED_THROUGHPUT = Gauge(
    "textserve_tuning_predicted_texts_per_second",
    "Throughput the tuner predicts for the budget in force on its mix of text lengths.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
MODEL_LOADED = Gauge(
    "textserve_model_loaded",
    "1 once the model is loaded and serving, else 0.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
MODEL_PRECISION = Gauge(
    "textserve_model_precision_info",
    "Numeric precision the loaded model runs in (fp32, fp16, bf16, int8): 1 while loaded.",
    ["service", "model", "version", "precision"],
    registry=REGISTRY,
)
MODEL_LOAD_DURATION = Gauge(
    "textserve_model_load_duration_seconds",
    "Time the last model load took (including any ONNX export).",
    ["service", "model", "version"],
    registry=REGISTRY,
)

# --- Model versions (lifecycle/) ---------------------------------------------------------
MODEL_REQUESTS = Counter(
    "textserve_model_requests_total",
    "Requests a model version answered (or failed), by service, model, version and status code.",
    ["service", "model", "version", "code"],
    registry=REGISTRY,
)
MODEL_REQUEST_DURATION = Histogram(
    "textserve_model_request_duration_seconds",
    "Time a model version spent on one request (routing to result).",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
MODEL_VERSION_STATE = Gauge(
    "textserve_model_version_state",
    "1 for the current state of a model version (READY, LOADING, UNLOADING, UNAVAILABLE, FAILED), else 0.",
    ["service", "model", "version", "state"],
    registry=REGISTRY,
)
ROUTING_WEIGHT = Gauge(
    "textserve_routing_weight",
    "Configured traffic weight of a model version (relative; READY versions share the traffic).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
SHADOW_REQUESTS = Counter(
    "textserve_shadow_requests_total",
    "Primary requests mirrored to the shadow version, by outcome (compared, failed, skipped).",
    ["service", "model", "version", "outcome"],
    registry=REGISTRY,
)
SHADOW_AGREEMENT = Histogram(
    "textserve_shadow_agreement",
    "Per-request agreement of the shadow with the primary in [0, 1]: mean cosine (embeddings), "
    "top-label agreement (classification), exact greedy-token match (generation).",
    ["service", "model", "version"],
    buckets=(0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0),
    registry=REGISTRY,
)
SHADOW_LATENCY = Histogram(
    "textserve_shadow_latency_seconds",
    "Wall time of one shadow call.",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- Calls to other textserve services ------------------------------------------------------
UPSTREAM_REQUESTS = Counter(
    "textserve_upstream_requests_total",
    "Calls this service made to another textserve service, by calling service, method and status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "textserve_upstream_request_duration_seconds",
    "Wall time of one call to another textserve service, by calling service, method and status code.",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- Cache ------------------------------------------------------------------------------
CACHE_HITS = Counter(
    "textserve_cache_hits_total",
    "Response-cache lookups answered from the cache.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    "textserve_cache_misses_total",
    "Response-cache lookups not found.",
    ["service", "model", "version"],
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "textserve_cache_errors_total",
    "Cache operations that failed or timed out (served from the model instead).",
    ["service", "model", "version"],
    registry=REGISTRY,
)
CACHE_READ_DURATION = Histogram(
    "textserve_cache_read_duration_seconds",
    "Time of one batched cache read.",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_WRITE_DURATION = Histogram(
    "textserve_cache_write_duration_seconds",
    "Time of one batched cache write.",
    ["service", "model", "version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_COALESCED = Counter(
    "textserve_cache_coalesced_total",
    "Inputs not computed because an identical input in flight (same or other request) was shared.",
    ["service", "model", "version"],
    registry=REGISTRY,
)

# --- Generation -------------------------------------------------------------------------
GEN_TTFT = Histogram(
    "textserve_generation_time_to_first_token_seconds",
    "Time from receiving a generation request to its first generated token.",
    ["service", "model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GEN_INTER_TOKEN = Histogram(
    "textserve_generation_inter_token_seconds",
    "Time between consecutive generated tokens of one sequence.",
    ["service", "model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GEN_TOKENS = Counter(
    "textserve_generation_tokens_total",
    "Tokens generated.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_RUNNING = Gauge(
    "textserve_generation_running_sequences",
    "Sequences in the running decode batch.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_WAITING = Gauge(
    "textserve_generation_waiting_sequences",
    "Sequences waiting for admission.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_KV_USED = Gauge(
    "textserve_generation_kv_tokens_used",
    "KV-cache tokens reserved by running sequences.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_KV_CAPACITY = Gauge(
    "textserve_generation_kv_tokens_capacity",
    "KV-cache budget in tokens.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_PREFIX_HITS = Counter(
    "textserve_generation_prefix_cache_hits_total",
    "Sequences whose prompt started with cached blocks (their keys and values were reused).",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_PREFIX_SAVED = Counter(
    "textserve_generation_prefix_cache_tokens_saved_total",
    "Prompt tokens whose keys and values came from the prefix cache instead of a forward pass.",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_PREFIX_TOKENS = Gauge(
    "textserve_generation_prefix_cache_tokens",
    "KV-cache tokens held by the prefix cache (counted in the KV budget, evicted on demand).",
    ["service", "model"],
    registry=REGISTRY,
)
GEN_CONSTRAINED = Counter(
    "textserve_generation_constrained_requests_total",
    "Requests with structured output (a response format), by kind (json_object, json_schema, regex).",
    ["service", "model", "kind"],
    registry=REGISTRY,
)
GEN_GRAMMAR_COMPILE = Histogram(
    "textserve_generation_grammar_compile_seconds",
    "Time to compile a response format's grammar (a format not in the grammar cache), by kind.",
    ["service", "model", "kind"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GEN_FINISHED = Counter(
    "textserve_generation_finished_total",
    "Sequences finished, by reason (length, stop, eos, cancelled).",
    ["service", "model", "reason"],
    registry=REGISTRY,
)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, resolved once per label values: on a request path `.labels()`
    costs a lock and a dict lookup per call. Bounded: label values are few by design."""
    return metric.labels(*labels)


def start_metrics_server(host: str, port: int) -> int:
    """Serves /metrics over HTTP in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
