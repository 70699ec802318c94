"""The floor of a Python gRPC embedding server: the least a grpc.aio server can do per call.

A reference for `bench_embedding`, measured in the same rounds as textserve: a bare
`grpc.aio` server implementing only `EmbeddingService.Embed` for one text per call, with the
model textserve serves loaded the same way (`EncoderModel`: same tokenizer, ONNX graph and
threads). Per call it tokenizes the text, puts it on a list, and awaits a future; one task
takes up to `--max-batch` waiting texts, runs them in one forward on a worker thread and
resolves the futures; the handler returns the vector. No interceptors, admission, deadlines,
metrics, versions, cache, validation or error mapping: whatever textserve costs per call above
this server is the price of those; what this server costs is grpc.aio's and the model's.
Not a product path: it answers nothing but well-formed single-text requests.

    python -m loadtests.floor_server --port 50099 [--max-batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
import numpy as np

from loadtests.serve import ProcessContext, free_port, process_cpu_seconds, stop_process

if TYPE_CHECKING:
    from textserve.runtime.encoder import EncoderModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


async def start_floor(
    model: EncoderModel, port: int, max_batch: int = 32
) -> tuple[grpc.aio.Server, Callable[[], Awaitable[None]]]:
    """The floor server for `model` started on 127.0.0.1:`port`; returns it and its stop."""
    from textserve.v1 import embedding_pb2, embedding_pb2_grpc

    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-batch")
    waiting: list[tuple[list[int], asyncio.Future[np.ndarray]]] = []
    arrived = asyncio.Event()

    async def batches() -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not waiting:
                arrived.clear()
                await arrived.wait()
            batch = waiting[:max_batch]
            del waiting[:max_batch]
            rows = await loop.run_in_executor(worker, model.run_batch, [ids for ids, _ in batch])
            for (_, future), row in zip(batch, rows, strict=True):
                future.set_result(row)

    class FloorEmbedding(embedding_pb2_grpc.EmbeddingServiceServicer):
        async def Embed(
            self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
        ) -> embedding_pb2.EmbedResponse:
            (encoded,) = model.tokenizer.encode_many(request.texts[:1])
            future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            waiting.append((encoded.ids, future))
            arrived.set()
            row = await future
            response = embedding_pb2.EmbedResponse()
            response.embeddings.add(input_tokens=len(encoded.ids)).values.extend(row.tolist())
            return response

    server = grpc.aio.server()
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(FloorEmbedding(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    batching = asyncio.create_task(batches())
    await server.start()

    async def stop() -> None:
        await server.stop(grace=None)
        batching.cancel()
        worker.shutdown(wait=False)

    return server, stop


async def serve(port: int, max_batch: int) -> None:
    """The floor server for the model textserve serves by default, until terminated."""
    from textserve.core.config import ModelConfig
    from textserve.runtime.encoder import EncoderModel

    model = await asyncio.to_thread(EncoderModel, ModelConfig(), "embedding")
    server, stop = await start_floor(model, port, max_batch)
    print(f"floor server on 127.0.0.1:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await stop()


class FloorProcess(ProcessContext):
    """This server in a subprocess on a free loopback port, for a benchmark's rounds."""

    def __init__(self, max_batch: int = 32, ready_limit_s: float = 120.0) -> None:
        self.port = free_port()
        self.max_batch = max_batch
        self.ready_limit_s = ready_limit_s
        self.proc: subprocess.Popen[bytes] | None = None

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the process has used so far."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def start(self) -> None:
        """Starts the process and waits until it answers an Embed."""
        from textserve.v1 import embedding_pb2, embedding_pb2_grpc

        command = [sys.executable, "-m", "loadtests.floor_server", "--port", str(self.port)]
        command += ["--max-batch", str(self.max_batch)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop_at = time.monotonic() + self.ready_limit_s
        with grpc.insecure_channel(self.address()) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("floor server exited during start-up")
                try:
                    stub.Embed(embedding_pb2.EmbedRequest(texts=["ready"]), timeout=2)
                    return
                except grpc.RpcError:
                    if time.monotonic() > stop_at:
                        raise TimeoutError("floor server not answering") from None
                    time.sleep(0.2)

    def stop(self) -> int:
        return stop_process(self.proc, timeout_s=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32, help="most texts in one forward")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_batch))


if __name__ == "__main__":
    main()
