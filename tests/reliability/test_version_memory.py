"""Memory comes back after unloading (issue 14): load and unload a second model version 5 times;
the process RSS after the last unload is within 10 % of the one-version baseline."""

from __future__ import annotations

from pathlib import Path

import grpc
from textserve.embedding.app import EmbeddingApp
from textserve.v1 import embedding_pb2, embedding_pb2_grpc, models_pb2, models_pb2_grpc

from tests.lifecycle_support import list_versions, make_version, repository, states
from tests.support import embedding_config, start_host

CYCLES = 5


def rss_bytes() -> int:
    """Resident set size of this process (the server runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_rss_returns_to_baseline_after_five_load_unload_cycles(
    tmp_path: Path, onnx_cache_dir: Path
) -> None:
    make_version(tmp_path, "1", "mean")
    make_version(tmp_path, "2", "mean")  # same graph as version 1: no export inside the cycles
    config = embedding_config(
        repository=repository(tmp_path, version_policy="specific", specific_versions=["1"])
    )
    host = await start_host([EmbeddingApp(config)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
            embed = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            control = models_pb2_grpc.ModelControlStub(channel)
            texts = [f"text number {i} about memory" for i in range(32)]
            await embed.Embed(embedding_pb2.EmbedRequest(texts=texts, skip_cache=True), timeout=60)
            baseline = rss_bytes()
            peaks = []
            for _ in range(CYCLES):
                await control.LoadVersion(models_pb2.LoadVersionRequest(version="2"), timeout=120)
                pinned = embedding_pb2.EmbedRequest(texts=texts, model_version="2", skip_cache=True)
                assert (await embed.Embed(pinned, timeout=60)).model.version == "2"
                peaks.append(rss_bytes())
                await control.UnloadVersion(models_pb2.UnloadVersionRequest(version="2"), timeout=120)
            after = rss_bytes()
            assert states(await list_versions(channel)) == {"1": "READY", "2": "UNAVAILABLE"}
    finally:
        await host.stop(grace=1.0)
    mib = 1024 * 1024
    print(
        f"\nRSS baseline {baseline / mib:.0f} MiB, loaded peaks {[round(p / mib) for p in peaks]} MiB, "
        f"after {CYCLES} unloads {after / mib:.0f} MiB ({(after / baseline - 1) * 100:+.1f} %)"
    )
    assert after <= baseline * 1.10
