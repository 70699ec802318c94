"""The opt-in payload log: sampled requests with their predictions and feedback, for retraining.

Texts are personal data. The log is off by default (`PayloadLogConfig.enabled`), and then
`make_payload_log` returns a `DisabledPayloadLog` that opens no file and no connection and
writes nothing, so no request text is ever stored. Turned on, a request is logged when a
hash of its request id falls under `sample_rate`, so its later feedback is logged too (the
same id is sampled again) and the two can be joined offline. Sinks are bounded:
- `JsonlSink`: one JSON object per line; the file is rotated at `max_bytes` to
  path.1 ... path.<backups> (the oldest dropped), so disk use stays below
  (backups + 1) x max_bytes. Writes run in a worker thread, never on the event loop.
- `RedisStreamSink`: `XADD key MAXLEN ~ n` (approximate trimming, a bound of n plus one
  stream node) and an `EXPIRE` refreshed on each write.
A failing sink is logged and counted out; it never fails the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from textserve.quality.config import PayloadLogConfig
from textserve.quality.metrics import PAYLOAD_RECORDS

log = logging.getLogger(__name__)

Record = Mapping[str, Any]


class PayloadSink(Protocol):
    """Where logged records go."""

    async def write(self, records: Sequence[Record]) -> None:
        """Appends the records."""
        ...

    async def close(self) -> None:
        """Flushes and releases the sink."""
        ...


class JsonlSink:
    """A JSONL file rotated at `max_bytes`, keeping `backups` older files; opened on first write."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = threading.Lock()

    async def write(self, records: Sequence[Record]) -> None:
        lines = [json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records]
        await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[bytes]) -> None:
        with self._lock:
            for line in lines:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("ab")
                    self._size = self._file.tell()
                if self._size > 0 and self._size + len(line) > self.max_bytes:
                    self._rotate()
                assert self._file is not None
                self._file.write(line)
                self._size += len(line)
            if self._file is not None:
                self._file.flush()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        if self.backups > 0:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("wb")
        self._size = 0

    async def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class RedisStreamSink:
    """A Redis stream capped at about `maxlen` entries that expires `ttl_s` after its last write.

    Takes a `redis.asyncio.Redis` client owned by the caller.
    """

    def __init__(self, client: Any, *, stream_key: str, maxlen: int, ttl_s: int) -> None:
        self._redis = client
        self.stream_key = stream_key
        self.maxlen = maxlen
        self.ttl_s = ttl_s

    async def write(self, records: Sequence[Record]) -> None:
        pipeline = self._redis.pipeline(transaction=False)
        for record in records:
            fields = {"record": json.dumps(record, ensure_ascii=False)}
            pipeline.xadd(self.stream_key, fields, maxlen=self.maxlen, approximate=True)
        pipeline.expire(self.stream_key, self.ttl_s)
        await pipeline.execute()

    async def close(self) -> None:
        return None


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request id falls in the sample (a stable hash, the same on every replica)."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


class PayloadLogger(Protocol):
    """The payload log a service calls; `DisabledPayloadLog` when off."""

    async def log_predictions(
        self, request_id: str, model: str, version: str, texts: Sequence[str], outputs: Sequence[Record]
    ) -> bool:
        """Logs the request's texts with one output each when sampled; True if written."""
        ...

    async def log_feedback(self, request_id: str, index: int, label: str) -> bool:
        """Logs feedback for a sampled request; True if written."""
        ...

    async def close(self) -> None:
        """Closes the sink."""
        ...


class DisabledPayloadLog:
    """The log when off: stores nothing, opens nothing."""

    async def log_predictions(
        self, request_id: str, model: str, version: str, texts: Sequence[str], outputs: Sequence[Record]
    ) -> bool:
        return False

    async def log_feedback(self, request_id: str, index: int, label: str) -> bool:
        return False

    async def close(self) -> None:
        return None


class PayloadLog:
    """The sampled payload log of one service over one sink."""

    def __init__(self, sink: PayloadSink, *, service: str, sample_rate: float) -> None:
        self.sink = sink
        self.service = service
        self.sample_rate = sample_rate

    async def log_predictions(
        self, request_id: str, model: str, version: str, texts: Sequence[str], outputs: Sequence[Record]
    ) -> bool:
        if not sampled(request_id, self.sample_rate):
            return False
        now = time.time()
        records = [
            {
                "kind": "prediction",
                "time": now,
                "service": self.service,
                "model": model,
                "version": version,
                "request_id": request_id,
                "index": index,
                "text": text,
                "output": dict(output),
            }
            for index, (text, output) in enumerate(zip(texts, outputs, strict=True))
        ]
        return await self._write("prediction", records)

    async def log_feedback(self, request_id: str, index: int, label: str) -> bool:
        if not sampled(request_id, self.sample_rate):
            return False
        record = {
            "kind": "feedback",
            "time": time.time(),
            "service": self.service,
            "request_id": request_id,
            "index": index,
            "label": label,
        }
        return await self._write("feedback", [record])

    async def _write(self, kind: str, records: Sequence[Record]) -> bool:
        try:
            await self.sink.write(records)
        except Exception:
            log.warning("payload log write failed (%d %s records dropped)", len(records), kind, exc_info=True)
            return False
        PAYLOAD_RECORDS.labels(self.service, kind).inc(len(records))
        return True

    async def close(self) -> None:
        await self.sink.close()


def make_payload_log(
    config: PayloadLogConfig, *, service: str, redis_client: Any = None
) -> PayloadLog | DisabledPayloadLog:
    """The configured payload log; `DisabledPayloadLog` unless `config.enabled`.

    The redis sink needs `redis_client` (a `redis.asyncio.Redis`, e.g. the cache's).
    """
    if not config.enabled:
        return DisabledPayloadLog()
    sink: PayloadSink
    if config.sink == "jsonl":
        sink = JsonlSink(config.path, max_bytes=config.max_bytes, backups=config.backups)
    else:
        if redis_client is None:
            raise ValueError("payload_log.sink=redis needs a Redis client (configure the cache's Redis URL)")
        sink = RedisStreamSink(
            redis_client, stream_key=config.stream_key, maxlen=config.stream_maxlen, ttl_s=config.ttl_s
        )
    return PayloadLog(sink, service=service, sample_rate=config.sample_rate)
