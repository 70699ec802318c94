"""Bearer-token auth on a real embedding server: unary and streaming RPCs, open probes, rotation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from textserve.client.channels import open_channel
from textserve.client.tokens import client_token
from textserve.core.config import AuthConfig
from textserve.core.metrics import REGISTRY
from textserve.transport import interceptors
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, loopback_server, start_host

STATIC_TOKEN = "static-token-8f1c2e"
FILE_TOKEN = "file-token-2b7d9a"
ROTATED_TOKEN = "rotated-token-5e3f10"
REQUEST = embedding_pb2.EmbedRequest(texts=["authorised text"])


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"\n{FILE_TOKEN}\n\n")
    return path


@pytest.fixture(scope="module")
async def auth_host(tokens_file: Path) -> AsyncIterator[ServiceHost]:
    from textserve.embedding.app import EmbeddingApp

    auth = AuthConfig(enabled=True, tokens=[STATIC_TOKEN], tokens_file=tokens_file)  # type: ignore[list-item]
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(auth=auth)))])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture
async def channel(auth_host: ServiceHost) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_host.port_of('embedding')}") as opened:
        yield opened


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _status_of_all_kinds(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None
) -> tuple[grpc.StatusCode, grpc.StatusCode, grpc.StatusCode]:
    """Status of Embed (unary), Info (unary) and EmbedStream (bidirectional stream)."""
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    codes: list[grpc.StatusCode] = []
    for call in (
        lambda: stub.Embed(REQUEST, metadata=metadata, timeout=30),
        lambda: stub.Info(embedding_pb2.InfoRequest(), metadata=metadata, timeout=30),
    ):
        try:
            await call()
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())

    # The stream half-closes without sending: a rejected stream then ends with the server's status
    # every time (a client still writing when the server ends the call can see INTERNAL instead,
    # grpc/grpc#36066). Accepted streams are checked with messages by _stream_roundtrip.
    stream = stub.EmbedStream(metadata=metadata, timeout=30)
    await stream.done_writing()
    codes.append(await stream.code())
    return codes[0], codes[1], codes[2]


async def _stream_roundtrip(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None) -> None:
    """An accepted EmbedStream carries messages both ways."""
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

    async def requests() -> AsyncIterator[embedding_pb2.EmbedStreamRequest]:
        for i in range(3):
            yield embedding_pb2.EmbedStreamRequest(request_id=str(i), request=REQUEST)

    ids = [item.request_id async for item in stub.EmbedStream(requests(), metadata=metadata, timeout=30)]
    assert ids == ["0", "1", "2"]


OK3 = (grpc.StatusCode.OK,) * 3
DENIED3 = (grpc.StatusCode.PERMISSION_DENIED,) * 3


async def test_no_token_is_unauthenticated_on_every_rpc_kind(channel: grpc.aio.Channel) -> None:
    assert await _status_of_all_kinds(channel, None) == (grpc.StatusCode.UNAUTHENTICATED,) * 3


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer    ", "Basic dXNlcjpwYXNz", STATIC_TOKEN, "Token " + STATIC_TOKEN],
)
async def test_malformed_header_is_unauthenticated(channel: grpc.aio.Channel, header: str) -> None:
    codes = await _status_of_all_kinds(channel, (("authorization", header),))
    assert codes == (grpc.StatusCode.UNAUTHENTICATED,) * 3


async def test_wrong_token_is_permission_denied_on_every_rpc_kind(channel: grpc.aio.Channel) -> None:
    before = REGISTRY.get_sample_value(
        "textserve_auth_failures_total", {"service": "embedding", "code": "PERMISSION_DENIED"}
    )
    codes = await _status_of_all_kinds(channel, _bearer("not-" + STATIC_TOKEN))
    assert codes == DENIED3
    after = REGISTRY.get_sample_value(
        "textserve_auth_failures_total", {"service": "embedding", "code": "PERMISSION_DENIED"}
    )
    assert (after or 0) - (before or 0) == 3


async def test_prefix_of_a_token_is_not_accepted(channel: grpc.aio.Channel) -> None:
    codes = await _status_of_all_kinds(channel, _bearer(STATIC_TOKEN[:-1]))
    assert codes == DENIED3


@pytest.mark.parametrize("token", [STATIC_TOKEN, FILE_TOKEN])
async def test_accepted_tokens_are_served(channel: grpc.aio.Channel, token: str) -> None:
    assert await _status_of_all_kinds(channel, _bearer(token)) == OK3
    assert await _status_of_all_kinds(channel, (("authorization", f"bearer {token}"),)) == OK3
    await _stream_roundtrip(channel, _bearer(token))


async def test_health_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="textserve.v1.EmbeddingService"), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for item in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        ask(), timeout=10
    ):
        names = [s.name for s in item.list_services_response.service]
    assert "textserve.v1.EmbeddingService" in names


async def test_unknown_method_stays_unimplemented(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/textserve.v1.EmbeddingService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_open_channel_sends_the_client_token(auth_host: ServiceHost, tmp_path: Path) -> None:
    """Inter-service channels carry auth.client_token (or client_token_file) on every call kind."""
    token_file = tmp_path / "client-token"
    token_file.write_text(FILE_TOKEN + "\n")
    address = f"127.0.0.1:{auth_host.port_of('embedding')}"
    for auth in (
        AuthConfig(client_token=STATIC_TOKEN),  # type: ignore[arg-type]
        AuthConfig(client_token_file=token_file),
    ):
        async with open_channel(address, token=client_token(auth)) as channel:
            assert await _status_of_all_kinds(channel, None) == OK3
            await _stream_roundtrip(channel, None)
    async with open_channel(address, token="wrong") as channel:
        assert await _status_of_all_kinds(channel, None) == DENIED3


async def test_rotated_tokens_file_takes_effect_without_restart(
    channel: grpc.aio.Channel, tokens_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interceptors, "TOKENS_FILE_RECHECK_S", 0.0)
    original = _replace_file(tokens_file, ROTATED_TOKEN + "\n")
    try:
        # The TokenSet may look again only after its last recheck interval: allow a few tries.
        for _ in range(50):
            codes = await _status_of_all_kinds(channel, _bearer(ROTATED_TOKEN))
            if codes == OK3:
                break
            await asyncio.sleep(0.1)
        assert codes == OK3
        assert await _status_of_all_kinds(channel, _bearer(FILE_TOKEN)) == DENIED3
        assert await _status_of_all_kinds(channel, _bearer(STATIC_TOKEN)) == OK3
    finally:
        _replace_file(tokens_file, original)


def _replace_file(path: Path, text: str) -> str:
    """Writes `text` (as a Secret update would) with a later mtime; returns the old text."""
    old = path.read_text()
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return old
