"""Server-sent events in the OpenAI format, and dropping work whose HTTP client has left.

A stream is `data: <json>\\n\\n` events ending with `data: [DONE]\\n\\n`; a failure after the
first event is sent as `data: {"error": {...}}` (what the OpenAI clients raise) before
[DONE]. A unary request races its work against the client's disconnect (as vLLM's
`with_cancellation`): when the client leaves first, the work (and with it the gRPC call)
is cancelled, so the service drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from textserve.gateway.backends import UpstreamStream
from textserve.gateway.errors import GatewayError

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
"""Last event of every stream."""
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
"""Headers of a stream (no caching, no proxy buffering)."""
CLIENT_CLOSED_REQUEST = 499
"""Status recorded (never seen by anyone) when the client left before the answer."""


@dataclass
class EventStream:
    """The SSE body of a streamed response and the upstream calls it reads."""

    events: AsyncIterator[bytes]
    upstreams: Sequence[UpstreamStream]

    def close(self) -> None:
        """Cancels every upstream call still running (idempotent)."""
        for stream in self.upstreams:
            stream.cancel()


class EventStreamResponse(StreamingResponse):
    """text/event-stream response that cancels its upstream calls however it ends.

    Starlette cancels the body on client disconnect but never closes an iterator it has not
    started; the `finally` here covers that too, so no generation outlives its client.
    """

    def __init__(self, stream: EventStream) -> None:
        super().__init__(stream.events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready; its work was cancelled."""


def sse_data(payload: BaseModel | dict[str, Any], include_null_usage: bool = False) -> bytes:
    """One `data:` event; with include_null_usage, `"usage": null` is written when unset (as OpenAI)."""
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    if include_null_usage:
        data.setdefault("usage", None)
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """The event that reports a failure inside a stream."""
    return sse_data(error.body())


async def wait_for_disconnect(request: Request) -> None:
    """Returns once the client has disconnected (the body must already have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`; if the client disconnects first, cancels it and raises ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


async def merge_streams(streams: Sequence[UpstreamStream]) -> AsyncIterator[tuple[int, Any]]:
    """(stream index, message) from several streams as they arrive; cancels them all on exit."""
    if len(streams) == 1:
        try:
            async for message in streams[0]:
                yield 0, message
        finally:
            streams[0].cancel()
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: UpstreamStream) -> None:
        try:
            async for message in stream:
                await queue.put((index, message, None))
        except Exception as error:
            await queue.put((index, None, error))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, message, error = await queue.get()
            if error is not None:
                raise error
            if message is None:
                remaining -= 1
                continue
            yield index, message
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.cancel()
