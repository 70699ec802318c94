"""Deadlines pass from an incoming RPC to the calls it makes (transport.interceptors + client.channels).

Two real gRPC servers on loopback: a "relay" server built with textserve's interceptors whose
handlers (one per RPC kind) call a "probe" server through `open_channel`; the probe answers
with the time its call had left. The probe and relay handlers are test handlers; the
interceptors, channels and gRPC underneath are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from textserve.client.channels import open_channel
from textserve.core.config import ClientConfig
from textserve.transport.deadlines import MIN_TIMEOUT_S, current_deadline
from textserve.transport.interceptors import build_interceptors

from tests.support import loopback_server

PROBE = "/test.Probe/Remaining"
LATE_DONE: dict[bytes, asyncio.Event] = {}
"""Set by the relay once its late onward call has been made (or refused), by request tag."""
DEFAULT_TIMEOUT_S = 60.0


def _remaining(context: grpc.aio.ServicerContext) -> bytes:
    left = context.time_remaining()
    return b"none" if left is None else repr(float(left)).encode()


SEEN_BY_PROBE: dict[bytes, float | None] = {}
"""time_remaining() of each tagged call that reached the probe (the relay's upstream), by tag."""


async def _probe_remaining(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request:
        SEEN_BY_PROBE[request] = context.time_remaining()
    return _remaining(context)


async def _start(server: grpc.aio.Server) -> int:
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port


@pytest.fixture(scope="module")
async def probe_address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_probe_remaining)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Probe", {"Remaining": handler}),)
    )
    port = await _start(server)
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def relay_address(probe_address: str) -> AsyncIterator[str]:
    """Relay server with textserve's interceptors; every kind of handler calls the probe once."""
    channel = open_channel(probe_address, ClientConfig(timeout_s=DEFAULT_TIMEOUT_S))
    probe = channel.unary_unary(PROBE)

    async def ask(explicit: float | None, tag: bytes = b"") -> bytes:
        return bytes(await probe(tag, timeout=explicit))

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request.startswith(b"late"):
            # Work the RPC spawned goes on past the caller's deadline (gRPC cancels the handler
            # itself then, not the task), and calls on: the call must get ~no time.
            task = asyncio.create_task(late_call(request))
            background.add(task)
            task.add_done_callback(background.discard)
            return await asyncio.shield(task)
        return await ask(float(request) if request else None)

    async def late_call(tag: bytes) -> bytes:
        deadline = current_deadline()  # the task inherits the RPC's deadline
        assert deadline is not None
        try:
            # The wait is the behaviour under test (time passing the deadline), not synchronisation.
            await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
            return await ask(None, tag=tag)
        finally:
            LATE_DONE.setdefault(tag, asyncio.Event()).set()

    background: set[asyncio.Task[bytes]] = set()

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield await ask(None)
        # Tasks spawned by the handler inherit the deadline too.
        yield await asyncio.create_task(ask(None))

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        return await ask(None)

    async def stream_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield await ask(None)

    async def deadline_seen(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"none" if current_deadline() is None else b"set"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        "DeadlineSeen": grpc.unary_unary_rpc_method_handler(deadline_seen),
    }
    server = grpc.aio.server(interceptors=build_interceptors("relay", loopback_server()))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Relay", handlers),))
    port = await _start(server)
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await channel.close()


# grpc-timeout travels with a few significant digits, rounded up: allow that much over.
SLACK_S = 0.1


def _seconds(raw: bytes) -> float:
    assert raw != b"none", "the call reached the probe without a deadline"
    return float(raw)


def _within(raw: bytes, limit: float) -> bool:
    return 0 < _seconds(raw) <= limit + SLACK_S


async def test_unary_call_inherits_the_callers_deadline(relay_address: str) -> None:
    async with grpc.aio.insecure_channel(relay_address) as channel:
        relay = channel.unary_unary("/test.Relay/Unary")
        assert _within(await relay(b"", timeout=5), 5)
        # An explicit, longer timeout inside the relay is still capped by the caller's 5 s.
        assert _within(await relay(b"100", timeout=5), 5)
        # A shorter explicit timeout wins.
        assert _within(await relay(b"2", timeout=30), 2)


async def test_call_without_incoming_deadline_gets_the_client_default(relay_address: str) -> None:
    async with grpc.aio.insecure_channel(relay_address) as channel:
        relay = channel.unary_unary("/test.Relay/Unary")
        seen = _seconds(await relay(b""))
        assert 5 < seen <= DEFAULT_TIMEOUT_S + SLACK_S
        assert await channel.unary_unary("/test.Relay/DeadlineSeen")(b"") == b"none"
        assert await channel.unary_unary("/test.Relay/DeadlineSeen")(b"", timeout=10) == b"set"


async def test_streaming_handlers_pass_the_deadline_on(relay_address: str) -> None:
    async with grpc.aio.insecure_channel(relay_address) as channel:
        answers = [item async for item in channel.unary_stream("/test.Relay/UnaryStream")(b"", timeout=7)]
        assert len(answers) == 2 and all(_within(a, 7) for a in answers)

        async def three() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x"

        single = await channel.stream_unary("/test.Relay/StreamUnary")(three(), timeout=7)
        assert _within(single, 7)
        many = [item async for item in channel.stream_stream("/test.Relay/StreamStream")(three(), timeout=7)]
        assert len(many) == 3 and all(_within(a, 7) for a in many)


async def test_expired_caller_makes_the_onward_call_fail_at_once(relay_address: str) -> None:
    """The relay waits past its caller's deadline: its onward call gets ~no time and fails.

    Measured at the relay's upstream (the probe records the time its call had left), not
    at the caller, whose own deadline fails the call whatever the relay does.
    """
    tag = b"late-1"
    done = LATE_DONE.setdefault(tag, asyncio.Event())
    async with grpc.aio.insecure_channel(relay_address) as channel:
        relay = channel.unary_unary("/test.Relay/Unary")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await relay(tag, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The relay goes on after its caller gave up: wait (bounded) until its onward call ended.
        await asyncio.wait_for(done.wait(), timeout=30)
    # Either the call never reached the probe (it expired on the way), or it came with ~no time.
    if tag in SEEN_BY_PROBE:
        seen = SEEN_BY_PROBE[tag]
        assert seen is not None and seen <= MIN_TIMEOUT_S + SLACK_S, seen
