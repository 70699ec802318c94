"""Maximum connection age: clients balancing over DNS reach a replica added after they connected.

Kubernetes clients resolve a headless Service name to the pod addresses and balance with
round_robin; gRPC re-resolves only when a connection goes away. Here a tiny DNS server on
loopback answers for one name, as the cluster DNS does for a headless Service: first with
two `textserve serve embedding` replicas (127.0.0.1 and 127.0.0.2, one port), then, once a
third (127.0.0.3) is SERVING, with all three. Eight clients call in a loop over one channel
to `dns://<that server>/<name>:<port>`. The servers close each connection after
server.max_connection_age_ms (GOAWAY, with a grace period for the calls on it); the client
re-resolves, and within the maximum age plus 5 s the third replica serves at least a quarter
of the calls, while no call fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, free_port, wait_until

NAME = "embedding.textserve.test"
MAX_AGE_MS = 2000
GRACE_MS = 1000
CLIENTS = 8
EMBED = "Embed"


class FakeDns:
    """A UDP DNS server answering A queries for NAME with the current addresses (TTL 0)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack("!H", query[:2])
        end = 12
        labels = []
        while query[end]:
            length = query[end]
            labels.append(query[end + 1 : end + 1 + length].decode().lower())
            end += 1 + length
        qtype, _ = struct.unpack("!HH", query[end + 1 : end + 5])
        question = query[12 : end + 5]
        known = ".".join(labels) == NAME
        answers = b""
        count = 0
        if known and qtype == 1:  # A
            for address in list(self.addresses):
                # Name pointer to the question (offset 12), type A, class IN, TTL 0, 4 bytes.
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
                count += 1
        flags = 0x8180 if known else 0x8183  # response, recursion available; NXDOMAIN if unknown
        return struct.pack("!HHHHHH", ident, flags, 1, count, 0, 0) + question + answers


def _replica(workdir: Path, host: str, port: int, index: int) -> ServeProcess:
    settings = {
        "log": {"level": "WARNING", "format": "json"},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "cache": {"backend": "none"},
        "embedding": {
            "server": {
                "host": host,
                "port": port,
                "grace_period_s": 2.0,
                "max_connection_age_ms": MAX_AGE_MS,
                "max_connection_age_grace_ms": GRACE_MS,
            },
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
        },
    }
    return ServeProcess(workdir, ["embedding"], settings, name=f"replica-{index}")


def _served(replica: ServeProcess) -> float:
    return replica.gauge("textserve_requests_total", service="embedding", method=EMBED, code="OK")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[int, list[ServeProcess]]]:
    port = free_port()
    started = [_replica(tmp_path, f"127.0.0.{i + 1}", port, i) for i in range(3)]
    try:
        yield port, started
    finally:
        for replica in started:
            replica.kill()


async def test_a_replica_added_later_gets_its_share_within_the_connection_age(
    replicas: tuple[int, list[ServeProcess]],
) -> None:
    port, (first, second, third) = replicas
    failures: list[str] = []
    calls = 0
    with FakeDns() as dns:
        first.start()
        second.start()
        await asyncio.gather(
            first.wait_serving(f"127.0.0.1:{port}"), second.wait_serving(f"127.0.0.2:{port}")
        )
        dns.addresses = ["127.0.0.1", "127.0.0.2"]
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            # grpc's DNS resolver waits 30 s between resolutions by default; the test's
            # connection age is 2 s, so the cool-down shrinks with it.
            ("grpc.dns_min_time_between_resolutions_ms", 500),
        ]
        channel = grpc.aio.insecure_channel(f"dns://127.0.0.1:{dns.port}/{NAME}:{port}", options=options)
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        stop = asyncio.Event()

        async def client() -> None:
            nonlocal calls
            while not stop.is_set():
                try:
                    await stub.Embed(embedding_pb2.EmbedRequest(texts=["connection age"]), timeout=10)
                    calls += 1
                except grpc.aio.AioRpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")
                await asyncio.sleep(0.005)  # the client's pacing: load, not synchronisation

        async with channel:
            clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
            try:
                await wait_until(lambda: calls >= CLIENTS or failures, limit_s=60)
                assert calls > 0 and not failures, failures[:3]
                # A new pod: listed by DNS once it is ready, as a headless Service does.
                third.start()
                await third.wait_serving(f"127.0.0.3:{port}")
                dns.addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                deadline = time.monotonic() + MAX_AGE_MS / 1000 + 5
                # Time passing max_connection_age is the behaviour under test.
                await asyncio.sleep(deadline - time.monotonic() - 2.0)
                # The share over the last 2 s before max age + 5 s.
                before = [_served(r) for r in (first, second, third)]
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                after = [_served(r) for r in (first, second, third)]
            finally:
                stop.set()
                await asyncio.gather(*clients)
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert not failures, f"{len(failures)} calls failed while connections cycled: {failures[:3]}"
    assert sum(served) > 0
    share = served[2] / sum(served)
    assert share >= 0.25, f"the third replica served {share:.0%} of {served}"
