"""Classifier benchmark: in-process embeddings vs vectors from the embedding service, one run.

The zero-shot sentiment classifier (the `make run` default) is served five ways, one
after another so they never compete for the CPU:
  * in-process: `textserve serve classifier` with its own copy of the model (the baseline);
  * shared model, same process: `textserve serve embedding classifier` as `make run` wires
    it: the classifier uses the embedding app's Encoder directly (one model);
  * via embedding gRPC, same process: the same two services, the classifier told to call the
    embedding service over loopback gRPC (embedding_address set);
  * via embedding gRPC, two processes: `serve embedding` and `serve classifier` apart (the
    Kubernetes layout);
  * the same without merging concurrent calls (embedding_calls_in_flight=0: one Embed call
    per Classify request), to show what merging buys.
Each is driven at concurrency 1 and 32 with one text per request and the cache skipped.
Throughput and latency ratios are against the in-process baseline at the same concurrency;
server CPU per call is the CPU time of the setup's server processes (both, when two) over the
measured seconds divided by the calls served.

    python -m loadtests.bench_classifier [--seconds 5] [--concurrency 1 32] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from loadtests.common import Bind, Sender, bench_parser, closed_loop
from loadtests.serve import CpuMeter, ServerProcess, free_port
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
    server_cpu_ms_per_call: float = 0.0
    """CPU time (user + system, /proc/<pid>/stat) of every server process of the setup over the
    measured seconds, per Classify call."""


SETTINGS = {"TEXTSERVE_CACHE__BACKEND": "none"}


async def start_setup(setup: str) -> tuple[list[ServerProcess], str]:
    """The servers of one setup, ready, and the classifier's address."""
    ports = {"classifier": free_port(), "embedding": free_port()}
    address_env = {"TEXTSERVE_CLASSIFIER__EMBEDDING_ADDRESS": f"127.0.0.1:{ports['embedding']}"}
    servers: list[ServerProcess] = []

    def server(services: list[str], env: dict[str, str]) -> ServerProcess:
        servers.append(ServerProcess(services, SETTINGS | env, ports=ports, metrics=False).launch())
        return servers[-1]

    try:
        if setup == BASELINE:
            server(["classifier"], {})
        elif setup in (SHARED, GRPC_SAME):
            server(["embedding", "classifier"], address_env if setup == GRPC_SAME else {})
        else:
            await server(["embedding"], {}).wait_ready()
            env = dict(address_env)
            if setup == GRPC_APART_UNMERGED:
                env["TEXTSERVE_CLASSIFIER__EMBEDDING_CALLS_IN_FLIGHT"] = "0"
            server(["classifier"], env)
        await servers[-1].wait_ready()
    except BaseException:
        for started in servers:
            started.stop()
        raise
    return servers, servers[-1].address("classifier")


def classify_call(texts: list[str]) -> Bind:
    """One text per Classify request, cache skipped."""
    from textserve.v1 import classifier_pb2, classifier_pb2_grpc

    requests = [classifier_pb2.ClassifyRequest(texts=[t], skip_cache=True) for t in texts]

    def bind(channel: grpc.aio.Channel) -> Sender:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        return lambda i: stub.Classify(requests[i % len(requests)], timeout=30)

    return bind


async def run(seconds: float, concurrencies: list[int], setups: list[str], words: int) -> list[Point]:
    call = classify_call(make_texts(512, words))
    points: list[Point] = []
    for setup in setups:
        servers, address = await start_setup(setup)
        try:
            for concurrency in concurrencies:
                meter = CpuMeter(servers)
                # the warm-up loads the prototypes and opens the connections
                load = await closed_loop(
                    address,
                    call,
                    concurrency,
                    seconds,
                    warmup_s=min(1.0, seconds / 3),
                    channels=4,
                    before_measure=meter.start,
                    after_measure=meter.stop,
                )
                stats = load.stats()
                point = Point(setup, concurrency, stats.throughput, stats.p50_ms, stats.p99_ms, stats.errors)
                point.server_cpu_ms_per_call = meter.seconds * 1000 / max(1, load.count)
                points.append(point)
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
        "| setup | concurrency | texts/s | x in-process | p50 ms | x in-process | p99 ms "
        "| server CPU ms/call | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        ratio = f"{p.throughput_ratio:.2f}" if p.throughput_ratio else "-"
        p50_ratio = f"{p.p50_ratio:.2f}" if p.p50_ratio else "-"
        lines.append(
            f"| {p.setup} | {p.concurrency} | {p.texts_per_s:.0f} | {ratio} | {p.p50_ms:.2f} | {p50_ratio} "
            f"| {p.p99_ms:.2f} | {p.server_cpu_ms_per_call:.2f} | {p.errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__)
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
