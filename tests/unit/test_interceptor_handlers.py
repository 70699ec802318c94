"""The interceptors wrap a method's handler once and reuse it; the wrapper still runs per call."""

from __future__ import annotations

from typing import Any

import grpc
from textserve.transport.deadlines import time_left
from textserve.transport.interceptors import AdmissionInterceptor, DeadlineInterceptor

METHOD = "/textserve.v1.EmbeddingService/Embed"


class _Details:
    method = METHOD
    invocation_metadata: tuple[Any, ...] = ()


class _Context:
    def time_remaining(self) -> float:
        return 5.0


async def test_a_method_is_wrapped_once_and_the_wrapper_runs_on_every_call() -> None:
    seen: list[float | None] = []

    async def embed(request: Any, context: Any) -> str:
        seen.append(time_left())
        return f"answer to {request}"

    registered = grpc.unary_unary_rpc_method_handler(embed)
    deadline, admission = DeadlineInterceptor(), AdmissionInterceptor("embedding", 8, 250)

    async def innermost(details: Any) -> grpc.RpcMethodHandler:
        return registered

    async def chain(details: Any) -> grpc.RpcMethodHandler:
        return await admission.intercept_service(lambda d: deadline.intercept_service(innermost, d), details)

    first, second = await chain(_Details()), await chain(_Details())
    assert first is second and first is not registered  # wrapped once, then reused
    assert await first.unary_unary("a", _Context()) == "answer to a"
    assert await second.unary_unary("b", _Context()) == "answer to b"
    # Each call recorded its own deadline and took (and gave back) an admission slot.
    assert len(seen) == 2 and all(left is not None and 0 < left <= 5.0 for left in seen)
    assert admission.in_flight == 0
    # Over the bound, a call is refused with a handler made for it, never the cached one.
    admission.in_flight = 8
    assert await chain(_Details()) is not first
