"""The embedding service killed (-9) under load while the classifier depends on it.

Embedding runs as a real `textserve serve embedding` process with mutual TLS and bearer
auth (health on a plaintext probe port); the classifier runs in-process with
`embedding_address` pointing at it, a client certificate and a client token, exactly as
deployed. Clients keep classifying throughout. While embedding is down the classifier must
answer UNAVAILABLE at once (never DEADLINE_EXCEEDED, INTERNAL or a hang); once a new
embedding process is up on the same port it must recover on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.config import ClientConfig, TlsConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc

from tests.pki import Pki, make_pki
from tests.procs import ServeProcess
from tests.support import ONNX_CACHE, free_port, loopback_server, model_config, start_host

TOKEN = "outage-client-token-6d2e"
CALL_TIMEOUT_S = 10.0
WORKERS = 4


@dataclass
class Embedding:
    process: ServeProcess
    port: int
    probe_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process.start()
        await self.process.wait_serving(f"127.0.0.1:{self.probe_port}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "outage")


@pytest.fixture
def embedding(tmp_path: Path, pki: Pki) -> Iterator[Embedding]:
    port, probe_port = free_port(), free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    settings = {
        "log": {"level": "INFO", "format": "json"},
        "metrics": {"enabled": False},
        "cache": {"backend": "none"},
        "embedding": {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "health_port": probe_port,
                "grace_period_s": 1.0,
                "tls": {
                    "enabled": True,
                    "cert_file": str(pki.server.cert),
                    "key_file": str(pki.server.key),
                    "ca_file": str(pki.ca),
                    "require_client_cert": True,
                },
                "auth": {"enabled": True, "tokens_file": str(tokens)},
            },
            "model": {"onnx_cache_dir": str(ONNX_CACHE)},
        },
    }
    served = Embedding(ServeProcess(tmp_path, ["embedding"], settings, name="embedding"), port, probe_port)
    try:
        yield served
    finally:
        served.process.kill()


@pytest.fixture
async def classifier(embedding: Embedding, pki: Pki) -> AsyncIterator[ServiceHost]:
    from textserve.classifier.app import ClassifierApp

    await embedding.start()
    tls = TlsConfig(enabled=True, ca_file=pki.ca, cert_file=pki.client.cert, key_file=pki.client.key)
    config = ClassifierServiceConfig(
        server=loopback_server(),
        model=model_config(),
        embedding_address=embedding.address,
        client=ClientConfig(tls=tls, timeout_s=CALL_TIMEOUT_S),
        cache_enabled=False,
    )
    host = await start_host([ClassifierApp(config, None, token=TOKEN)])
    yield host
    await host.stop(grace=1.0)


@dataclass
class Outcomes:
    """What the load saw, in order: (phase, code, seconds, details)."""

    phase: str = "up"
    calls: list[tuple[str, grpc.StatusCode, float, str]] = field(default_factory=list)

    def count(self, phase: str, code: grpc.StatusCode | None = None) -> int:
        return sum(1 for p, c, _, _ in self.calls if p == phase and (code is None or c == code))


async def _load(address: str, outcomes: Outcomes, stop: asyncio.Event, worker: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        index = 0
        while not stop.is_set():
            index += 1
            request = classifier_pb2.ClassifyRequest(
                texts=[f"I really love this, take {worker}.{index}"], skip_cache=True
            )
            phase = outcomes.phase
            started = time.monotonic()
            try:
                response = await stub.Classify(request, timeout=CALL_TIMEOUT_S)
                assert response.classifications[0].top_label
                code, details = grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
            outcomes.calls.append((phase, code, time.monotonic() - started, details))
            if code != grpc.StatusCode.OK:
                await asyncio.sleep(0.05)  # a real client backs off; keeps the loop from spinning


async def _until(condition: object, what: str, limit_s: float = 120.0) -> None:
    stop_at = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < stop_at, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_classifier_is_unavailable_fast_while_embedding_is_down_and_recovers(
    classifier: ServiceHost, embedding: Embedding
) -> None:
    address = f"127.0.0.1:{classifier.port_of('classifier')}"
    outcomes = Outcomes()
    stop = asyncio.Event()
    workers = [asyncio.create_task(_load(address, outcomes, stop, w)) for w in range(WORKERS)]
    try:
        await _until(lambda: outcomes.count("up", grpc.StatusCode.OK) >= 20, "answers with embedding up")
        outcomes.phase = "down"
        embedding.process.kill()
        await _until(lambda: outcomes.count("down") >= 40, "answers with embedding down")
        outcomes.phase = "restarting"
        await embedding.start()
        outcomes.phase = "back"
        await _until(lambda: outcomes.count("back", grpc.StatusCode.OK) >= 20, "answers after the restart")
    finally:
        stop.set()
        await asyncio.gather(*workers)

    for phase in ("up", "down", "restarting", "back"):
        times = [t for p, _, t, _ in outcomes.calls if p == phase]
        if times:
            ok = outcomes.count(phase, grpc.StatusCode.OK)
            print(f"{phase}: {len(times)} calls, {ok} OK, slowest {max(times):.3f} s")
    codes = {code for _, code, _, _ in outcomes.calls}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    # Only the calls in flight at the kill (one per worker at most) may fail in the "up" phase.
    assert outcomes.count("up") - outcomes.count("up", grpc.StatusCode.OK) <= WORKERS
    down = [(code, details) for phase, code, _, details in outcomes.calls if phase == "down"]
    assert sum(code == grpc.StatusCode.UNAVAILABLE for code, _ in down) >= 40 - WORKERS
    assert all("embedding" in details for code, details in down if code == grpc.StatusCode.UNAVAILABLE)
    # Once recovered, it stays recovered.
    back = [code for phase, code, _, _ in outcomes.calls if phase == "back"]
    first_ok = back.index(grpc.StatusCode.OK)
    assert back[first_ok:] == [grpc.StatusCode.OK] * (len(back) - first_ok)
