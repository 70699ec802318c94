"""SIGTERM drain of a real `textserve serve embedding` process.

The server runs as a subprocess from a YAML config on free loopback ports (bearer auth on,
DEBUG logs). A burst of requests is put in flight (they wait max_queue_delay_ms in the batch queue, and
the server's own /metrics counts them), plus an open stream; SIGTERM is sent, and then:
health turns NOT_SERVING, new calls are refused while the drain runs, the open stream is
still served, every in-flight RPC completes OK, the process exits 0 within its grace period, and its logs
hold neither the bearer token nor any request text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, free_port

TOKEN = "drain-secret-token-91c4"
MARKER = "zebra-quokka-marker"
GRACE_S = 60.0
BURST = 16
TEXTS_PER_REQUEST = 2
QUEUE_DELAY_MS = 3000.0


@dataclass
class Server:
    """The `textserve serve embedding` process under test and its ports."""

    process: ServeProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def in_flight(self, method: str) -> float:
        return self.process.gauge("textserve_requests_in_flight", method=method)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    settings = {
        "log": {"level": "DEBUG", "format": "json"},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "cache": {"backend": "memory"},
        "embedding": {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "grace_period_s": GRACE_S,
                "auth": {"enabled": True, "tokens_file": str(tokens)},
            },
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
            # A lone request waits this long for its batch to fill: a window with requests in flight.
            "batcher": {"max_batch_size": 256, "max_queue_delay_ms": QUEUE_DELAY_MS},
        },
    }
    process = ServeProcess(tmp_path, ["embedding"], settings)
    process.start()
    try:
        yield Server(process, port)
    finally:
        process.kill()


def _request(i: int) -> embedding_pb2.EmbedRequest:
    texts = [f"{MARKER} request {i} text {j}" for j in range(TEXTS_PER_REQUEST)]
    return embedding_pb2.EmbedRequest(texts=texts, skip_cache=True)


async def _status(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_sigterm_drains_in_flight_requests_and_exits_cleanly(server: Server) -> None:
    await server.process.wait_serving(server.address)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        # An open stream keeps the drain going until this test closes it.
        stream = stub.EmbedStream(metadata=metadata, timeout=300)
        await stream.write(embedding_pb2.EmbedStreamRequest(request_id="before", request=_request(-1)))
        assert (await stream.read()).request_id == "before"
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=300
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        # The burst waits in the batch queue for max_queue_delay_ms: in flight whatever the CPU speed.
        burst = [
            asyncio.ensure_future(stub.Embed(_request(i), metadata=metadata, timeout=300))
            for i in range(BURST)
        ]
        for _ in range(600):
            if await asyncio.to_thread(server.in_flight, "Embed") >= BURST:
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(server.in_flight, "Embed") >= BURST
        assert not any(call.done() for call in burst)
        sent = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)

        # The drain starts: health turns NOT_SERVING, and new connections are refused.
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        new_call_codes = []
        for _ in range(100):
            async with grpc.aio.insecure_channel(server.address) as fresh:
                code = await _status(
                    embedding_pb2_grpc.EmbeddingServiceStub(fresh).Embed(
                        embedding_pb2.EmbedRequest(texts=["new"]), metadata=metadata, timeout=2
                    )
                )
            new_call_codes.append(code)
            if code == grpc.StatusCode.UNAVAILABLE:
                break
        # The open stream is still served during the drain, then closes cleanly.
        await stream.write(embedding_pb2.EmbedStreamRequest(request_id="during", request=_request(-2)))
        assert (await stream.read()).request_id == "during"
        await stream.done_writing()
        stream_code = await stream.code()
        codes = [await _status(call) for call in burst]
        responses = [call.result() for call in burst if not call.exception()]

    assert new_call_codes[-1] == grpc.StatusCode.UNAVAILABLE, new_call_codes
    assert stream_code == grpc.StatusCode.OK
    assert codes == [grpc.StatusCode.OK] * BURST, codes
    assert all(len(r.embeddings) == TEXTS_PER_REQUEST for r in responses)

    returncode = await asyncio.to_thread(server.process.wait, GRACE_S + 30)
    assert returncode == 0, server.process.logs()[-3000:]
    assert time.monotonic() - sent < GRACE_S + 30
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(  # noqa: ASYNC210
            f"http://127.0.0.1:{server.process.metrics_port}/metrics", timeout=2
        ),
    ):
        raise AssertionError("metrics endpoint still up after exit")

    logs = server.process.logs()
    assert "signal received; draining" in logs
    assert '"level": "error"' not in logs, logs[-3000:]
    assert TOKEN not in logs
    assert MARKER not in logs
