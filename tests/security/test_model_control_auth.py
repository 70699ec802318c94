"""The model-control RPCs need the admin role when auth is on: a plain token gets
PERMISSION_DENIED on textserve.v1.ModelControl and on the OIP repository extension, while it
still embeds; an admin token may do both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from textserve.core.config import AuthConfig
from textserve.embedding.app import EmbeddingApp
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc, models_pb2, models_pb2_grpc

from tests.oip_client import official
from tests.support import embedding_config, loopback_server, start_host

USER = "user-token-5d1c"
ADMIN = "admin-token-77ab"


@pytest.fixture(scope="module")
async def host(onnx_cache_dir: Any) -> AsyncIterator[ServiceHost]:
    auth = AuthConfig(enabled=True, tokens=[USER], admin_tokens=[ADMIN])  # type: ignore[list-item]
    started = await start_host([EmbeddingApp(embedding_config(server=loopback_server(auth=auth)))])
    yield started
    await started.stop(grace=1.0)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_plain_token_is_refused_on_control_rpcs(host: ServiceHost) -> None:
    address = f"127.0.0.1:{host.port_of('embedding')}"
    async with grpc.aio.insecure_channel(address) as channel:
        control = models_pb2_grpc.ModelControlStub(channel)
        calls = [
            control.ListVersions(models_pb2.ListVersionsRequest(), metadata=bearer(USER), timeout=10),
            control.UnloadVersion(
                models_pb2.UnloadVersionRequest(version="1"), metadata=bearer(USER), timeout=10
            ),
            control.SetRouting(
                models_pb2.SetRoutingRequest(weights={"1": 1}), metadata=bearer(USER), timeout=10
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "admin" in (refused.value.details() or "")
        embedded = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(texts=["hi"]), metadata=bearer(USER), timeout=30
        )
        assert embedded.model.version == "1"
        listing = await control.ListVersions(
            models_pb2.ListVersionsRequest(), metadata=bearer(ADMIN), timeout=10
        )
        assert [v.version for v in listing.versions] == ["1"]
    triton = official()
    oip = triton.aio.InferenceServerClient(address)
    try:
        with pytest.raises(triton.utils.InferenceServerException) as denied:
            await oip.unload_model("embedding", headers={"authorization": f"Bearer {USER}"})
        assert "PERMISSION_DENIED" in str(denied.value.status())
        index = await oip.get_model_repository_index(
            headers={"authorization": f"Bearer {ADMIN}"}, as_json=True
        )
        assert [(m["version"], m["state"]) for m in index["models"]] == [("1", "READY")]
    finally:
        await oip.close()
