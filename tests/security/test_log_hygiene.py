"""No secrets and no request texts in logs, nor in the printed configuration.

Every log record of the process (root logger, DEBUG, the JSON formatter the services use)
is captured while a server with bearer auth handles good, bad, malformed and unauthorised
requests that carry a distinctive text; neither that text nor any token may appear.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from textserve.cli import main as cli_main
from textserve.core.config import AuthConfig
from textserve.core.logging import JsonFormatter
from textserve.transport.server import ServiceHost
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, loopback_server, start_host

TOKEN = "hygiene-secret-token-3f9a"
WRONG_TOKEN = "hygiene-wrong-token-7c21"
REDIS_PASSWORD = "hygiene-redis-password-55e0"
MARKER = "platypus-narwhal-marker"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
async def auth_host() -> AsyncIterator[ServiceHost]:
    from textserve.embedding.app import EmbeddingApp

    auth = AuthConfig(enabled=True, tokens=[TOKEN])  # type: ignore[list-item]
    host = await start_host([EmbeddingApp(embedding_config(server=loopback_server(auth=auth)))])
    yield host
    await host.stop(grace=1.0)


async def _call(coro: object) -> grpc.StatusCode:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_requests_with_secrets_and_texts_leave_no_trace_in_logs(
    auth_host: ServiceHost, captured_logs: io.StringIO
) -> None:
    good = (("authorization", f"Bearer {TOKEN}"),)
    wrong = (("authorization", f"Bearer {WRONG_TOKEN}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_host.port_of('embedding')}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        codes = [
            await _call(stub.Embed(embedding_pb2.EmbedRequest(texts=[f"{MARKER} ok"]), metadata=good)),
            await _call(stub.Embed(embedding_pb2.EmbedRequest(texts=[MARKER * 5000]), metadata=good)),
            await _call(
                stub.Embed(
                    embedding_pb2.EmbedRequest(
                        texts=[f"{MARKER} " * 400], truncation=common_pb2.TRUNCATION_POLICY_REJECT
                    ),
                    metadata=good,
                )
            ),
            await _call(stub.Embed(embedding_pb2.EmbedRequest(texts=[MARKER]), metadata=wrong)),
            await _call(stub.Embed(embedding_pb2.EmbedRequest(texts=[MARKER]))),
        ]
        raw = channel.unary_unary("/textserve.v1.EmbeddingService/Embed")
        codes.append(await _call(raw(b"\x0a\xff" + MARKER.encode(), metadata=good)))
        stream = stub.EmbedStream(metadata=good)
        await stream.write(
            embedding_pb2.EmbedStreamRequest(request_id=MARKER, request=embedding_pb2.EmbedRequest())
        )
        await stream.done_writing()
        codes.append(await stream.code())
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    logs = captured_logs.getvalue()
    assert "rpc rejected by auth" in logs  # the capture works and saw the auth path
    for secret in (TOKEN, WRONG_TOKEN, MARKER):
        assert secret not in logs


def test_printed_config_masks_every_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "cache": {"backend": "redis", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"},
        "embedding": {
            "server": {"auth": {"enabled": True, "tokens": [TOKEN], "client_token": WRONG_TOKEN}},
        },
        "classifier": {"server": {"auth": {"client_token": TOKEN}}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["config", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "tokens" in printed and "127.0.0.1:6379" in printed
    for secret in (TOKEN, WRONG_TOKEN, REDIS_PASSWORD):
        assert secret not in printed
