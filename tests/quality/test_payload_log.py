"""The opt-in payload log: off writes nothing anywhere; on, it samples by request id and stays bounded."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio
from textserve.quality.config import PayloadLogConfig
from textserve.quality.feedback import FeedbackJoiner, Prediction, RedisPredictionStore
from textserve.quality.payload_log import DisabledPayloadLog, PayloadLog, make_payload_log, sampled

from tests.redis_server import RedisServer
from tests.shared_data import sst2


def listing(folder: Path) -> list[Path]:
    """The folder's entries, sorted."""
    return sorted(folder.iterdir())


def values_of_every_key(client: redis.Redis) -> bytes:
    """Every string, list, hash, set and stream value in the database, concatenated."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            out.extend(b"".join(pair) for pair in client.hgetall(key).items())
        elif kind == b"set":
            out.extend(client.smembers(key))
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                out.extend(b"".join(pair) for pair in fields.items())
        out.append(key)
    return b"\n".join(out)


async def test_off_by_default_no_text_reaches_disk_or_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    secret = f"my card number is {uuid.uuid4().hex}"
    texts = [text for _, text in sst2("dev")[:4]] + [secret]
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    prefix = f"test-off-{uuid.uuid4().hex[:6]}:"
    store = RedisPredictionStore(client, key_prefix=prefix, max_entries=100, ttl_s=60)
    joiner = FeedbackJoiner(store, service="classifier")
    logs = [
        make_payload_log(PayloadLogConfig(path=tmp_path / "payloads.jsonl"), service="classifier"),
        make_payload_log(
            PayloadLogConfig(sink="redis", sample_rate=1.0, stream_key=f"test-off-{uuid.uuid4().hex}"),
            service="classifier",
            redis_client=client,
        ),
    ]
    try:
        assert PayloadLogConfig().enabled is False
        for payload_log in logs:
            assert isinstance(payload_log, DisabledPayloadLog)
            for request in range(50):
                request_id = f"req-{request}"
                outputs = [{"label": "positive", "score": 0.9}] * len(texts)
                assert not await payload_log.log_predictions(request_id, "m", "1", texts, outputs)
                served = [Prediction(request_id, i, "m", "1", "positive", 0.9) for i in range(len(texts))]
                await joiner.record(served)
                assert not await payload_log.log_feedback(request_id, 4, "negative")
                await joiner.feedback(request_id, 4, "negative")
            await payload_log.close()
    finally:
        await client.aclose()
    assert listing(tmp_path) == []
    stored = values_of_every_key(redis_server.client())
    assert secret.encode() not in stored
    assert not any(text.encode() in stored for text in texts)


async def test_jsonl_sink_logs_sampled_requests_and_their_feedback(tmp_path: Path) -> None:
    path = tmp_path / "log" / "payloads.jsonl"
    config = PayloadLogConfig(enabled=True, sample_rate=0.25, path=path)
    payload_log = make_payload_log(config, service="classifier")
    assert isinstance(payload_log, PayloadLog)
    texts = [text for _, text in sst2("dev")[:3]]
    logged = []
    for request in range(400):
        request_id = f"req-{request}"
        outputs = [{"label": "positive", "score": 0.75}] * 3
        if await payload_log.log_predictions(request_id, "m", "1", texts, outputs):
            logged.append(request_id)
        assert await payload_log.log_feedback(request_id, 1, "negative") == (request_id in logged)
    await payload_log.close()
    assert 0.18 < len(logged) / 400 < 0.32
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    predictions = [record for record in records if record["kind"] == "prediction"]
    feedback = [record for record in records if record["kind"] == "feedback"]
    assert len(predictions) == 3 * len(logged) and len(feedback) == len(logged)
    assert {record["request_id"] for record in feedback} == set(logged)
    assert predictions[1]["text"] == texts[1]
    assert predictions[1]["output"] == {"label": "positive", "score": 0.75}


async def test_jsonl_sink_rotates_within_its_size_bound(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    config = PayloadLogConfig(enabled=True, sample_rate=1.0, path=path, max_bytes=4096, backups=2)
    payload_log = make_payload_log(config, service="classifier")
    texts = [text for _, text in sst2("dev")[:200]]
    for request in range(100):
        await payload_log.log_predictions(f"r{request}", "m", "1", texts[request : request + 2], [{}, {}])
    await payload_log.close()
    files = listing(tmp_path)
    assert [file.name for file in files] == ["payloads.jsonl", "payloads.jsonl.1", "payloads.jsonl.2"]
    assert all(file.stat().st_size <= 4096 for file in files)
    last = json.loads(path.read_text(encoding="utf-8").splitlines()[-1])
    assert last["request_id"] == "r99" and last["index"] == 1


async def test_redis_stream_sink_is_capped_and_expires(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    key = f"test-payloads-{uuid.uuid4().hex[:8]}"
    config = PayloadLogConfig(
        enabled=True, sink="redis", sample_rate=1.0, stream_key=key, stream_maxlen=100, ttl_s=60
    )
    payload_log = make_payload_log(config, service="classifier", redis_client=client)
    try:
        for request in range(300):
            assert await payload_log.log_predictions(f"r{request}", "m", "1", ["a text", "b text"], [{}, {}])
        length = await client.xlen(key)
        assert 100 <= length <= 200  # MAXLEN ~ trims whole stream nodes (100 entries each by default)
        assert 0 < await client.ttl(key) <= 60
        _, fields = (await client.xrevrange(key, count=1))[0]
        assert json.loads(fields[b"record"])["request_id"] == "r299"
    finally:
        await client.aclose()


def test_redis_sink_needs_a_client() -> None:
    with pytest.raises(ValueError, match="Redis client"):
        make_payload_log(PayloadLogConfig(enabled=True, sink="redis"), service="classifier")


def test_sampling_is_stable_and_near_its_rate() -> None:
    ids = [uuid.UUID(int=i).hex for i in range(4000)]
    chosen = [request_id for request_id in ids if sampled(request_id, 0.1)]
    assert 0.08 < len(chosen) / len(ids) < 0.12
    assert chosen == [request_id for request_id in ids if sampled(request_id, 0.1)]
    assert not any(sampled(request_id, 0.0) for request_id in ids[:100])
    assert all(sampled(request_id, 1.0) for request_id in ids[:100])
