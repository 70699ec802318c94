"""Poll mode (Triton's --model-control-mode=poll): version folders appearing in the repository
are loaded, a corrupt one becomes FAILED with its reason (and a log line) while version 1 serves
every call, a removed one is unloaded; the routing file is re-read when it changes."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import grpc
import pytest
from textserve.embedding.app import EmbeddingApp
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.lifecycle_support import (
    MODEL,
    list_versions,
    make_corrupt_version,
    make_version,
    repository,
    states,
)
from tests.support import embedding_config, start_host, wait_until


async def test_poll_mode_failed_version_never_disturbs_the_serving_one(
    tmp_path: Path, onnx_cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "repository"
    make_version(root, "1", "mean")
    routing_file = tmp_path / "routing.yaml"
    routing_file.write_text("weights: {'1': 100}\n")
    config = embedding_config(repository=repository(root, poll_interval_s=0.05, routing_file=routing_file))
    app = EmbeddingApp(config)
    manager = app.service.versions
    host = await start_host([app])
    statuses: list[str] = []
    versions: set[str] = set()
    stop = asyncio.Event()

    async def traffic(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
        while not stop.is_set():
            try:
                response = await stub.Embed(embedding_pb2.EmbedRequest(texts=["still here"]), timeout=30)
                versions.add(response.model.version)
                statuses.append("OK")
            except grpc.aio.AioRpcError as error:
                statuses.append(error.code().name)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            caller = asyncio.create_task(traffic(stub))
            # A corrupt version appears at once (written aside, then renamed in, as a volume update does).
            staging = tmp_path / "staging"
            make_corrupt_version(staging, "2")
            with caplog.at_level(logging.ERROR, logger="textserve.lifecycle.manager"):
                (staging / MODEL / "2").rename(root / MODEL / "2")
                await wait_until(lambda: "2" in manager.slots and manager.slots["2"].state == "FAILED")
            listing = await list_versions(channel)
            assert states(listing) == {"1": "READY", "2": "FAILED"}
            failed = next(v for v in listing.versions if v.version == "2")
            assert failed.reason  # why it failed, e.g. the safetensors error
            assert any(
                r.getMessage() == "model version failed to load" and getattr(r, "version", "") == "2"
                for r in caplog.records
            )
            # A removed folder is forgotten; a good new one is loaded and, by the routing file, takes traffic.
            shutil.rmtree(root / MODEL / "2")
            make_version(staging, "3", "mean")
            (staging / MODEL / "3").rename(root / MODEL / "3")
            await wait_until(lambda: manager.serving() == ["1", "3"] and "2" not in manager.slots, limit_s=60)
            assert states(await list_versions(channel)) == {"1": "READY", "3": "READY"}
            assert versions == {"1"}  # weights {"1": 100}: version 3 takes nothing yet
            routing_file.write_text("weights: {'1': 0, '3': 100}\n")
            await wait_until(lambda: "3" in versions, limit_s=30)
            stop.set()
            await caller
    finally:
        stop.set()
        await host.stop(grace=1.0)
    assert statuses and set(statuses) == {"OK"}
