"""Calling another textserve service: the time a call may take, its errors, its metrics.

Used by the clients a service keeps towards another one (the embedding service's remote
tokenizer, the classifier's remote embedding source). A call never gets more time than the
request being served has left, never waits for a connection (`wait_for_ready=False`, so an
unreachable service is UNAVAILABLE at once), and its failure keeps its status code.
Channels themselves (TLS, bearer token) come from core/channels.py.
"""

from __future__ import annotations

import time

import grpc

from textserve.core import metrics
from textserve.core.errors import DeadlineExceeded


def call_timeout(deadline: float | None, default_s: float) -> float:
    """Seconds a call may take: what is left of `deadline` (absolute time.monotonic()),
    else `default_s`. Raises DeadlineExceeded when the deadline has already passed."""
    if deadline is None:
        return default_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline passed before the call to another service; not computed")
    return left


def record_call(service: str, method: str, code: grpc.StatusCode, started: float) -> None:
    """Counts one call to another service (textserve_upstream_requests_total) and its duration."""
    metrics.UPSTREAM_REQUESTS.labels(service=service, method=method, code=code.name).inc()
    metrics.UPSTREAM_DURATION.labels(service=service, method=method, code=code.name).observe(
        time.perf_counter() - started
    )
