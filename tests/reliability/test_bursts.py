"""Full batches finishing together must not make the server refuse the next burst of calls.

Regression: with an HTTP/2 max_concurrent_streams cap of 100, 64 callers sharing one
connection and batches of 64 finishing at once got ~1% RST_STREAM(REFUSED_STREAM), seen by
clients as UNAVAILABLE, although never more than 64 calls were open.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import grpc
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, free_port

CALLERS = 64
SECONDS = 4.0


async def test_bursts_of_full_batches_are_all_served(tmp_path: Path) -> None:
    port = free_port()
    settings = {
        "metrics": {"enabled": False},
        "cache": {"backend": "none"},
        "embedding": {
            "server": {"host": "127.0.0.1", "port": port},
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
            "batcher": {"max_batch_size": CALLERS},
        },
    }
    process = ServeProcess(tmp_path, ["embedding"], settings)
    process.start()
    try:
        address = f"127.0.0.1:{port}"
        await process.wait_serving(address)
        outcomes: collections.Counter[str] = collections.Counter()
        stop_at = time.monotonic() + SECONDS
        async with grpc.aio.insecure_channel(address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

            async def caller(index: int) -> None:
                sent = 0
                while time.monotonic() < stop_at:
                    text = f"caller {index} call {sent} a short sentence to embed"
                    try:
                        await stub.Embed(
                            embedding_pb2.EmbedRequest(texts=[text], skip_cache=True), timeout=30
                        )
                        outcomes["OK"] += 1
                    except grpc.aio.AioRpcError as error:
                        outcomes[f"{error.code().name}: {error.details()}"] += 1
                    sent += 1

            await asyncio.gather(*(caller(i) for i in range(CALLERS)))
        assert outcomes["OK"] > CALLERS, outcomes
        assert set(outcomes) == {"OK"}, outcomes
    finally:
        process.kill()
