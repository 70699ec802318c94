"""SIGTERM drain of a real `textserve serve all` process with work in flight on both fronts.

One process runs every gRPC service and the HTTP gateway (the `make run` layout). Open when
SIGTERM arrives: an HTTP streamed completion through the gateway (its tokens come from the
generation service in the same process, over gRPC) and a bidirectional gRPC EmbedStream.
Both must complete normally: the HTTP stream to its last token and `[DONE]`, the gRPC stream
with a reply to a message sent after SIGTERM and status OK; and the process exits 0. A
process that stopped its gRPC servers (grace 0) before the gateway had drained would cut
both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH
from textserve.runtime.random_lm import DEMO_NAME
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, free_port

GRACE_S = 60.0
MAX_TOKENS = 600
"""Tokens of the HTTP stream: SIGTERM is sent as soon as its first token arrives, so the rest
(hundreds of decode steps, each a forward, a gRPC message and an SSE event) is still to come
whatever the CPU speed; the test checks that tokens did arrive after SIGTERM."""


@pytest.fixture
def serve_all(tmp_path: Path) -> Iterator[tuple[ServeProcess, dict[str, int]]]:
    ports = {name: free_port() for name in ("tokenizer", "embedding", "classifier", "generation", "gateway")}

    def server(name: str) -> dict[str, object]:
        return {"host": "127.0.0.1", "port": ports[name], "grace_period_s": GRACE_S}

    settings = {
        "log": {"level": "INFO", "format": "json"},
        "metrics": {"enabled": False},
        "cache": {"backend": "memory"},
        "tokenizer": {"server": server("tokenizer")},
        "embedding": {"server": server("embedding"), "model": {"onnx_cache_dir": str(ONNX_CACHE)}},
        "classifier": {"server": server("classifier")},
        "generation": {
            "server": server("generation"),
            "model": {"path": RANDOM_MODEL_PATH, "backend": "torch"},
            "cache_enabled": False,
        },
        "gateway": {
            "host": "127.0.0.1",
            "port": ports["gateway"],
            "embedding_address": f"127.0.0.1:{ports['embedding']}",
            "generation_address": f"127.0.0.1:{ports['generation']}",
            "grace_period_s": GRACE_S,
        },
    }
    process = ServeProcess(tmp_path, ["all"], settings)
    process.start()
    try:
        yield process, ports
    finally:
        process.kill()


async def _wait_gateway_ready(process: ServeProcess, url: str) -> None:
    """Bounded poll of the gateway's /ready (the process must stay alive meanwhile)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        for _ in range(1800):
            assert process.alive(), "process exited:\n" + process.logs()[-4000:]
            try:
                if (await http.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway never ready:\n" + process.logs()[-4000:])


def _embed_message(request_id: str) -> embedding_pb2.EmbedStreamRequest:
    return embedding_pb2.EmbedStreamRequest(
        request_id=request_id,
        request=embedding_pb2.EmbedRequest(texts=[f"text {request_id}"], skip_cache=True),
    )


async def test_sigterm_lets_http_and_grpc_streams_finish(
    serve_all: tuple[ServeProcess, dict[str, int]],
) -> None:
    process, ports = serve_all
    url = f"http://127.0.0.1:{ports['gateway']}"
    for name in ("embedding", "generation"):
        await process.wait_serving(f"127.0.0.1:{ports[name]}")
    await _wait_gateway_ready(process, url)

    body = {
        "model": DEMO_NAME,
        "prompt": "Once upon a time",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['embedding']}") as channel,
        httpx.AsyncClient(base_url=url, timeout=GRACE_S) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200, await response.aread()
        stream = embedding_pb2_grpc.EmbeddingServiceStub(channel).EmbedStream(timeout=GRACE_S)
        await stream.write(_embed_message("before"))
        assert (await stream.read()).request_id == "before"

        events: list[str] = []
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                break
        os.kill(process.pid, signal.SIGTERM)
        sent_at = len(events)

        # The gRPC stream is still served during the drain, then closes with OK.
        reply = None
        with contextlib.suppress(grpc.aio.AioRpcError):  # the status below says what went wrong
            await stream.write(_embed_message("during"))
            reply = await stream.read()
            await stream.done_writing()
        stream_code = await stream.code()

        with contextlib.suppress(httpx.HTTPError):  # a cut stream shows as a missing [DONE] below
            async for line in lines:
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])

    # Both fronts are checked before either assertion fails, so a failure names every cut stream.
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    http_errors = [chunk["error"] for chunk in chunks if "error" in chunk]
    cut = {
        "grpc": None if stream_code == grpc.StatusCode.OK else stream_code,
        "http": None if events[-1] == "[DONE]" and not http_errors else (http_errors, events[-1][:100]),
    }
    assert cut == {"grpc": None, "http": None}
    assert reply is not None and reply != grpc.aio.EOF and reply.request_id == "during", reply
    assert len(events) - sent_at > 1, "the stream ended before SIGTERM: nothing was in flight"
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert text
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert finish[-1] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS

    returncode = await asyncio.to_thread(process.wait, GRACE_S + 30)
    logs = process.logs()
    assert returncode == 0, logs[-3000:]
    assert "signal received; draining" in logs
    assert '"level": "error"' not in logs, logs[-3000:]
