"""TLS and mutual TLS on a real embedding server, with certificates generated for the test.

Clients are built by client.channels.open_channel from a ClientConfig, exactly as services
build their inter-service channels.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.client.channels import open_channel
from textserve.core.config import ClientConfig, TlsConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.pki import Pki, make_pki
from tests.support import embedding_config, loopback_server, start_host

REQUEST = embedding_pb2.EmbedRequest(texts=["over TLS"])
REFUSED = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "main")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: its certificates must be refused."""
    return make_pki(tmp_path_factory.mktemp("pki-other"), "other")


@pytest.fixture(scope="module")
async def tls_host(pki: Pki) -> AsyncIterator[ServiceHost]:
    """Server TLS only (any client may connect over TLS); plaintext probe port for Kubernetes."""
    from textserve.embedding.app import EmbeddingApp

    tls = TlsConfig(enabled=True, cert_file=pki.server.cert, key_file=pki.server.key)
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(tls=tls, health_port=0)))])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="module")
async def mtls_host(pki: Pki) -> AsyncIterator[ServiceHost]:
    """Mutual TLS: clients need a certificate signed by the CA."""
    from textserve.embedding.app import EmbeddingApp

    tls = TlsConfig(
        enabled=True,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_file=pki.ca,
        require_client_cert=True,
    )
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(tls=tls)))])
    yield host
    await host.stop(grace=1.0)


def _address(host: ServiceHost) -> str:
    return f"127.0.0.1:{host.port_of('embedding')}"


def _client(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None, **extra: object
) -> ClientConfig:
    return ClientConfig(tls=TlsConfig(enabled=True, ca_file=ca, cert_file=cert, key_file=key, **extra))


async def _embed(address: str, config: ClientConfig | None, deadline_s: float = 30.0) -> grpc.StatusCode:
    """Status of one Embed (and, when it succeeds, one EmbedStream) over a fresh channel."""
    async with open_channel(address, config) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        try:
            response = await stub.Embed(REQUEST, timeout=deadline_s)
            assert len(response.embeddings[0].values) == 384

            async def one() -> AsyncIterator[embedding_pb2.EmbedStreamRequest]:
                yield embedding_pb2.EmbedStreamRequest(request_id="s", request=REQUEST)

            ids = [item.request_id async for item in stub.EmbedStream(one(), timeout=deadline_s)]
            assert ids == ["s"]
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_tls_client_trusting_the_ca_is_served(tls_host: ServiceHost, pki: Pki) -> None:
    assert await _embed(_address(tls_host), _client(ca=pki.ca)) == grpc.StatusCode.OK


async def test_tls_server_name_is_checked(tls_host: ServiceHost, pki: Pki) -> None:
    """The certificate names 127.0.0.1/localhost; expecting another name must fail the handshake."""
    assert (
        await _embed(f"localhost:{tls_host.port_of('embedding')}", _client(ca=pki.ca)) == grpc.StatusCode.OK
    )
    wrong = _client(ca=pki.ca, server_name_override="not-this-server.example")
    assert await _embed(_address(tls_host), wrong, deadline_s=5) == REFUSED


async def test_tls_client_trusting_another_ca_refuses_the_server(
    tls_host: ServiceHost, other_pki: Pki
) -> None:
    assert await _embed(_address(tls_host), _client(ca=other_pki.ca), deadline_s=5) == REFUSED


async def test_plaintext_client_cannot_talk_to_tls_server(tls_host: ServiceHost) -> None:
    assert await _embed(_address(tls_host), None, deadline_s=5) == REFUSED


async def test_plaintext_probe_port_serves_only_health(tls_host: ServiceHost) -> None:
    """Kubernetes gRPC probes cannot speak TLS: server.health_port answers health in plaintext, only that."""
    probe_port = tls_host.running[0].probe_port
    assert probe_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="textserve.v1.EmbeddingService"), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(REQUEST, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_mtls_client_with_certificate_is_served(mtls_host: ServiceHost, pki: Pki) -> None:
    config = _client(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert await _embed(_address(mtls_host), config) == grpc.StatusCode.OK


async def test_mtls_client_without_certificate_is_refused(mtls_host: ServiceHost, pki: Pki) -> None:
    assert await _embed(_address(mtls_host), _client(ca=pki.ca), deadline_s=5) == REFUSED


async def test_mtls_client_certificate_from_another_ca_is_refused(
    mtls_host: ServiceHost, pki: Pki, other_pki: Pki
) -> None:
    config = _client(ca=pki.ca, cert=other_pki.client.cert, key=other_pki.client.key)
    assert await _embed(_address(mtls_host), config, deadline_s=5) == REFUSED


async def test_mtls_server_still_serves_after_refusals(mtls_host: ServiceHost, pki: Pki) -> None:
    config = _client(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert await _embed(_address(mtls_host), _client(ca=pki.ca), deadline_s=5) == REFUSED
    assert await _embed(_address(mtls_host), config) == grpc.StatusCode.OK


async def test_rotated_certificates_are_used_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mounted files change (cert-manager renewal, here even a new CA): new connections get the
    new certificate and a client certificate from the new CA is accepted, with no restart."""
    import shutil

    from textserve.embedding.app import EmbeddingApp
    from textserve.transport import tls as tls_module

    monkeypatch.setattr(tls_module, "RECHECK_S", 0.0)
    old, new = make_pki(tmp_path / "old", "old"), make_pki(tmp_path / "new", "new")
    mounted = tmp_path / "mounted"
    mounted.mkdir()

    def mount(pki: Pki, bump_ns: int) -> None:
        """Writes the PKI's server files where the Secret is mounted, with a later mtime."""
        for name, source in (("tls.crt", pki.server.cert), ("tls.key", pki.server.key), ("ca.crt", pki.ca)):
            target = mounted / name
            shutil.copyfile(source, target)
            stat = target.stat()
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump_ns))

    mount(old, 0)
    tls = TlsConfig(
        enabled=True,
        cert_file=mounted / "tls.crt",
        key_file=mounted / "tls.key",
        ca_file=mounted / "ca.crt",
        require_client_cert=True,
    )
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(tls=tls)))])
    try:
        address = _address(host)
        old_client = _client(ca=old.ca, cert=old.client.cert, key=old.client.key)
        new_client = _client(ca=new.ca, cert=new.client.cert, key=new.client.key)
        assert await _embed(address, old_client) == grpc.StatusCode.OK
        assert await _embed(address, new_client, deadline_s=5) == REFUSED

        mount(new, 2_000_000_000)
        # The first handshake after the change may still be served from the old files.
        codes = [await _embed(address, new_client, deadline_s=5) for _ in range(3)]
        assert codes[-1] == grpc.StatusCode.OK, codes
        assert await _embed(address, old_client, deadline_s=5) == REFUSED
    finally:
        await host.stop(grace=1.0)
