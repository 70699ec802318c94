"""Limits on what a client controls, and overload shedding, on real embedding servers over loopback.

Assertions are on status codes and counts, never on times: the machine is shared and loaded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from textserve.core.config import BatcherConfig
from textserve.core.metrics import REGISTRY
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, loopback_server, start_host

LABELS = {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}
LONG = "word " * 300  # cut to the model's 256 tokens: the slowest single text


@pytest.fixture(scope="module")
async def limited_host() -> AsyncIterator[ServiceHost]:
    """Small message limit, a queue of 8 texts run one at a time."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config(
        server=loopback_server(max_message_bytes=64 * 1024),
        batcher=BatcherConfig(max_batch_size=1, max_queue_size=8),
        cache_enabled=False,
    )
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="module")
async def serial_host() -> AsyncIterator[ServiceHost]:
    """One text per batch, a deep queue (a long request keeps the worker busy), 4 streams per connection."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config(
        server=loopback_server(max_concurrent_streams=4),
        batcher=BatcherConfig(max_batch_size=1, max_queue_size=4096),
        cache_enabled=False,
    )
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="module")
async def rpc_capped_host() -> AsyncIterator[ServiceHost]:
    """At most 2 RPCs handled at once (server.max_concurrent_rpcs)."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config(server=loopback_server(max_concurrent_rpcs=2), cache_enabled=False)
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


def _address(host: ServiceHost) -> str:
    return f"127.0.0.1:{host.port_of('embedding')}"


async def _code(call: asyncio.Future[object] | object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_oversized_request_is_resource_exhausted(limited_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(_address(limited_host)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=["x" * 70_000]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (caught.value.details() or "")
        info = await stub.Info(embedding_pb2.InfoRequest(), timeout=30)
        assert info.limits.max_request_bytes == 64 * 1024
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=["still fine"]), timeout=30)
    assert len(response.embeddings) == 1


async def test_oversized_response_is_resource_exhausted(limited_host: ServiceHost) -> None:
    """100 vectors of 384 floats do not fit in 64 KiB: the client gets RESOURCE_EXHAUSTED, not garbage."""
    async with grpc.aio.insecure_channel(_address(limited_host)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        code = await _code(
            stub.Embed(embedding_pb2.EmbedRequest(texts=[f"t{i}" for i in range(100)]), timeout=60)
        )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_queue_full_sheds_with_resource_exhausted(limited_host: ServiceHost) -> None:
    """A burst far over max_queue_size: some requests are shed at once, the rest are all served."""
    before = REGISTRY.get_sample_value("textserve_batcher_rejected_total", LABELS) or 0.0
    async with grpc.aio.insecure_channel(_address(limited_host)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        calls = [
            stub.Embed(
                embedding_pb2.EmbedRequest(texts=[f"burst {i} a " + LONG, f"burst {i} b " + LONG]),
                timeout=120,
            )
            for i in range(64)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        after_burst = await stub.Embed(embedding_pb2.EmbedRequest(texts=["after the burst"]), timeout=60)
    codes = Counter(
        grpc.StatusCode.OK if isinstance(r, embedding_pb2.EmbedResponse) else r.code()  # type: ignore[union-attr]
        for r in results
    )
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert "max_queue_size=8" in (result.details() or "")
        else:
            assert isinstance(result, embedding_pb2.EmbedResponse) and len(result.embeddings) == 2
    after = REGISTRY.get_sample_value("textserve_batcher_rejected_total", LABELS) or 0.0
    assert after - before == 2 * codes[grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(after_burst.embeddings) == 1


async def test_concurrent_rpc_cap_sheds_with_resource_exhausted(rpc_capped_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(_address(rpc_capped_host)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        calls = [
            stub.Embed(embedding_pb2.EmbedRequest(texts=[f"capped {i} " * 40] * 16), timeout=120)
            for i in range(24)
        ]
        codes = Counter(await asyncio.gather(*(_code(call) for call in calls)))
        after = await _code(stub.Embed(embedding_pb2.EmbedRequest(texts=["after"]), timeout=60))
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0, codes
    assert codes[grpc.StatusCode.OK] >= 2, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert after == grpc.StatusCode.OK


async def test_streams_per_connection_are_capped(serial_host: ServiceHost) -> None:
    """With max_concurrent_streams=4, a 5th call on the same connection waits; other connections do not."""
    address = _address(serial_host)
    async with (
        grpc.aio.insecure_channel(address) as crowded,
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as other,
    ):
        stub = embedding_pb2_grpc.EmbeddingServiceStub(crowded)
        idle = [stub.EmbedStream(timeout=120) for _ in range(4)]
        for stream in idle:
            await stream.write(embedding_pb2.EmbedStreamRequest(request_id="warm", request=_one("warm")))
            assert (await stream.read()).request_id == "warm"
        fifth = await _code(stub.Embed(_one("fifth"), timeout=1.5))
        elsewhere = await _code(
            embedding_pb2_grpc.EmbeddingServiceStub(other).Embed(_one("other"), timeout=60)
        )
        await idle[0].done_writing()
        assert await idle[0].code() == grpc.StatusCode.OK
        after_one_closed = await _code(stub.Embed(_one("fifth again"), timeout=60))
        for stream in idle[1:]:
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
    assert fifth == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elsewhere == grpc.StatusCode.OK
    assert after_one_closed == grpc.StatusCode.OK


def _one(text: str) -> embedding_pb2.EmbedRequest:
    return embedding_pb2.EmbedRequest(texts=[text])


async def test_many_idle_streams_do_not_starve_others(embedding_host: ServiceHost) -> None:
    """200 open, idle EmbedStream calls over 4 connections; unary calls and the streams still work."""
    address = f"127.0.0.1:{embedding_host.port_of('embedding')}"
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(5)
    ]
    try:
        streams = [
            embedding_pb2_grpc.EmbeddingServiceStub(channels[i % 4]).EmbedStream(timeout=300)
            for i in range(200)
        ]
        for stream in streams[::20]:  # make sure the calls really reached the server
            await stream.write(embedding_pb2.EmbedStreamRequest(request_id="hello", request=_one("hello")))
            assert (await stream.read()).request_id == "hello"
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channels[4])
        codes = await asyncio.gather(*(_code(stub.Embed(_one(f"busy {i}"), timeout=120)) for i in range(32)))
        assert set(codes) == {grpc.StatusCode.OK}
        for i, stream in enumerate(streams[5::20]):
            await stream.write(embedding_pb2.EmbedStreamRequest(request_id=f"late{i}", request=_one("late")))
            assert (await stream.read()).request_id == f"late{i}"
        for stream in streams:
            await stream.done_writing()
        finals = Counter(await asyncio.gather(*(stream.code() for stream in streams)))
        assert finals == Counter({grpc.StatusCode.OK: 200})
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def test_deadline_passed_in_queue_is_not_computed(serial_host: ServiceHost) -> None:
    """A request whose deadline passes while it waits is answered DEADLINE_EXCEEDED and dropped unrun."""

    def dropped() -> float:
        return sum(
            REGISTRY.get_sample_value("textserve_batcher_dropped_total", {**LABELS, "reason": reason}) or 0.0
            for reason in ("cancelled", "expired")
        )

    before = dropped()
    async with grpc.aio.insecure_channel(_address(serial_host)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        # 128 full-length texts, one per batch, are queued ahead of a request with a 0.2 s deadline.
        busy = stub.Embed(embedding_pb2.EmbedRequest(texts=[f"{i} {LONG}" for i in range(128)]), timeout=300)
        for _ in range(600):  # until the long request is queued (it is tokenized off the loop first)
            if (REGISTRY.get_sample_value("textserve_queue_depth", LABELS) or 0) >= 64:
                break
            await asyncio.sleep(0.05)
        late = await _code(stub.Embed(_one("too late"), timeout=0.2))
        busy_code = await _code(busy)
    assert late == grpc.StatusCode.DEADLINE_EXCEEDED
    assert busy_code == grpc.StatusCode.OK
    # Dropped from the queue (cancelled by the deadline or expired at batch formation), never run.
    for _ in range(50):
        if dropped() > before:
            break
        await asyncio.sleep(0.1)
    assert dropped() > before


async def test_clients_that_never_read_do_not_block_others(embedding_host: ServiceHost) -> None:
    """Streams whose clients keep writing but never read fill their flow-control windows and stall;
    other clients are still served, and cancelling the stalled streams frees everything."""
    address = f"127.0.0.1:{embedding_host.port_of('embedding')}"
    in_flight = {"service": "embedding", "method": "EmbedStream"}
    # No BDP probing: the client's receive window stays at its initial size, so a client that
    # never reads stalls the server's sends, and then the server's reads, whatever the speed.
    stalled_channel = grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
    )
    stub = embedding_pb2_grpc.EmbeddingServiceStub(stalled_channel)
    streams = [stub.EmbedStream(timeout=300) for _ in range(4)]

    async def flood(stream: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        for i in range(2000):  # far more than the window and the flow-control buffers hold
            # 50 kB each: 100 MB per stream, more than any flow-control window grows to.
            request = embedding_pb2.EmbedRequest(texts=[f"unread {i} " + "x" * 50_000], skip_cache=True)
            await stream.write(embedding_pb2.EmbedStreamRequest(request_id=str(i), request=request))

    writers = [asyncio.create_task(flood(stream)) for stream in streams]
    try:
        for _ in range(100):  # until the writers are stuck on flow control
            await asyncio.sleep(0.1)
            if (REGISTRY.get_sample_value("textserve_requests_in_flight", in_flight) or 0) >= 4:
                break
        async with grpc.aio.insecure_channel(address) as other:
            other_stub = embedding_pb2_grpc.EmbeddingServiceStub(other)
            codes = await asyncio.gather(
                *(_code(other_stub.Embed(_one(f"other {i}"), timeout=60)) for i in range(16))
            )
        assert set(codes) == {grpc.StatusCode.OK}
        assert not all(writer.done() for writer in writers), "the floods finished: nothing was stalled"
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await stalled_channel.close()
    for _ in range(100):
        if (REGISTRY.get_sample_value("textserve_requests_in_flight", in_flight) or 0) == 0:
            break
        await asyncio.sleep(0.1)
    assert (REGISTRY.get_sample_value("textserve_requests_in_flight", in_flight) or 0) == 0
