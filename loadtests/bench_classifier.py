"""Classifier benchmark: in-process embeddings vs vectors from the embedding service, one run.

The zero-shot sentiment classifier (the `make run` default) is served five ways, one
after another so they never compete for the CPU:
  * in-process: `textserve serve classifier` with its own copy of the model (the baseline);
  * shared model, same process: `textserve serve embedding classifier` as `make run` wires
    it: the classifier calls the embedding app's EmbeddingService directly (one model);
  * via embedding gRPC, same process: the same two services, the classifier told to call the
    embedding service over loopback gRPC (embedding_address set);
  * via embedding gRPC, two processes: `serve embedding` and `serve classifier` apart (the
    Kubernetes layout);
  * the same without merging concurrent calls (embedding_calls_in_flight=0: one Embed call
    per Classify request), to show what merging buys.
Each is driven at concurrency 1 and 32 with one text per request and the cache skipped.
Throughput and latency ratios are against the in-process baseline at the same concurrency.

    python -m loadtests.bench_classifier [--seconds 5] [--concurrency 1 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from loadtests.bench_embedding import free_port, percentile
from loadtests.texts import make_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASELINE = "in-process"
SHARED = "shared model, same process"
GRPC_SAME = "via embedding gRPC, same process"
GRPC_APART = "via embedding gRPC, two processes"
GRPC_APART_UNMERGED = "via embedding gRPC, two processes, no merging"
SETUPS = (BASELINE, SHARED, GRPC_SAME, GRPC_APART, GRPC_APART_UNMERGED)


@dataclass
class Point:
    """One measured configuration."""

    setup: str
    concurrency: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    throughput_ratio: float = 0.0
    p50_ratio: float = 0.0


class Server:
    """`textserve serve <services>` in a subprocess on free loopback ports."""

    def __init__(self, services: list[str], env_overrides: dict[str, str]) -> None:
        env = dict(os.environ)
        env.update(
            {
                "TEXTSERVE_METRICS__ENABLED": "false",
                "TEXTSERVE_CACHE__BACKEND": "none",
                "TEXTSERVE_LOG__LEVEL": "WARNING",
            }
        )
        env.update(env_overrides)
        self._log = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "textserve.cli", "serve", *services], env=env, stderr=self._log
        )

    async def wait_ready(self, address: str, limit_s: float = 180) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + limit_s
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited during start-up (code {self.proc.returncode})")
                await asyncio.sleep(0.2)
        raise TimeoutError(f"server at {address} not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _bind(service: str, port: int) -> dict[str, str]:
    prefix = f"TEXTSERVE_{service.upper()}__SERVER__"
    return {f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port)}


async def start_setup(setup: str) -> tuple[list[Server], str]:
    """The servers of one setup, ready, and the classifier's address."""
    classifier_port, embedding_port = free_port(), free_port()
    classifier = f"127.0.0.1:{classifier_port}"
    embedding = f"127.0.0.1:{embedding_port}"
    servers: list[Server] = []
    try:
        address_env = {"TEXTSERVE_CLASSIFIER__EMBEDDING_ADDRESS": embedding}
        if setup == BASELINE:
            servers.append(Server(["classifier"], _bind("classifier", classifier_port)))
        elif setup in (SHARED, GRPC_SAME):
            env = _bind("classifier", classifier_port) | _bind("embedding", embedding_port)
            servers.append(
                Server(["embedding", "classifier"], env | (address_env if setup == GRPC_SAME else {}))
            )
        else:
            servers.append(Server(["embedding"], _bind("embedding", embedding_port)))
            await servers[-1].wait_ready(embedding)
            env = _bind("classifier", classifier_port) | address_env
            if setup == GRPC_APART_UNMERGED:
                env["TEXTSERVE_CLASSIFIER__EMBEDDING_CALLS_IN_FLIGHT"] = "0"
            servers.append(Server(["classifier"], env))
        await servers[-1].wait_ready(classifier)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, classifier


async def drive(
    address: str, texts: list[str], concurrency: int, seconds: float
) -> tuple[float, list[float], int]:
    """`concurrency` callers each classifying one text per request, back to back."""
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(concurrency, 4)))]
    stubs = [classifier_pb2_grpc.ClassifierServiceStub(c) for c in channels]
    requests = [classifier_pb2.ClassifyRequest(texts=[t], skip_cache=True) for t in texts]
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def worker(index: int, record: bool) -> int:
        nonlocal errors
        stub = stubs[index % len(stubs)]
        count, cursor = 0, index
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await stub.Classify(requests[cursor % len(requests)], timeout=30)
            except grpc.aio.AioRpcError:
                errors += record
                continue
            if record:
                latencies.append((time.perf_counter() - t0) * 1000)
            count += 1
            cursor += concurrency
        return count

    stop_at = time.perf_counter() + min(1.0, seconds / 3)  # warm-up (prototypes, connections)
    await asyncio.gather(*(worker(i, False) for i in range(concurrency)))
    started = time.perf_counter()
    stop_at = started + seconds
    counts = await asyncio.gather(*(worker(i, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return sum(counts) / elapsed, latencies, errors


async def run(seconds: float, concurrencies: list[int], setups: list[str], words: int) -> list[Point]:
    texts = make_texts(512, words)
    points: list[Point] = []
    for setup in setups:
        servers, address = await start_setup(setup)
        try:
            for concurrency in concurrencies:
                throughput, latencies, errors = await drive(address, texts, concurrency, seconds)
                points.append(
                    Point(
                        setup,
                        concurrency,
                        throughput,
                        percentile(latencies, 50),
                        percentile(latencies, 99),
                        errors,
                    )
                )
        finally:
            for server in reversed(servers):
                server.stop()
    for point in points:
        base = next((p for p in points if p.setup == BASELINE and p.concurrency == point.concurrency), None)
        if base is not None and base.texts_per_s > 0:
            point.throughput_ratio = point.texts_per_s / base.texts_per_s
            point.p50_ratio = point.p50_ms / base.p50_ms
    return points


def render(points: list[Point], words: int) -> str:
    """Markdown table; ratios are against the in-process baseline at the same concurrency."""
    lines = [
        f"zero-shot sentiment classifier, one text (~{words} words) per request, cache skipped",
        "",
        "| setup | concurrency | texts/s | x in-process | p50 ms | x in-process | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        ratio = f"{p.throughput_ratio:.2f}" if p.throughput_ratio else "-"
        p50_ratio = f"{p.p50_ratio:.2f}" if p.p50_ratio else "-"
        lines.append(
            f"| {p.setup} | {p.concurrency} | {p.texts_per_s:.0f} | {ratio} | {p.p50_ms:.2f} | {p50_ratio} "
            f"| {p.p99_ms:.2f} | {p.errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="concurrent callers")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS), help="setups to measure")
    parser.add_argument("--words", type=int, default=12, help="words per text (~1.2 tokens per word)")
    parser.add_argument("--json", type=Path, help="also write the points as JSON")
    args = parser.parse_args()
    setups = [s for s in SETUPS if s in args.setups]
    if BASELINE not in setups:
        parser.error(f"--setups must include the baseline {BASELINE!r}")
    points = asyncio.run(run(args.seconds, args.concurrency, setups, args.words))
    print(render(points, args.words))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2))


if __name__ == "__main__":
    main()
