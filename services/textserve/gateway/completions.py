"""POST /v1/completions: OpenAI CompletionRequest -> GenerationService -> OpenAI response or SSE.

Each prompt of the request is one Generate call making its `n` choices (choice `index` =
prompt position x n + choice), run concurrently; `logprobs` (legacy format: tokens, their
logprobs, the top alternatives as {token: logprob}, text offsets) and `response_format` (an
extension here, as in vLLM) go to the service as they are; a streamed request merges their
GenerateStream messages as they arrive. The
first message of every stream is awaited before the HTTP response starts, so a request
the service rejects (bad input, overload) gets its HTTP status, not a 200 stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from textserve.gateway.backends import Backends, UpstreamStream
from textserve.gateway.calls import CallOptions
from textserve.gateway.errors import GatewayError, invalid
from textserve.gateway.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
    completion_id,
    now,
)
from textserve.gateway.sampling import (
    add_usage,
    check_supported,
    completion_logprobs,
    finish_reason,
    rename_field,
    response_format,
    sampling_params,
    usage_of,
)
from textserve.gateway.streaming import DONE, EventStream, error_event, merge_streams, sse_data
from textserve.v1 import generation_pb2

MAX_PROMPTS = 32
"""Most prompts in one /v1/completions request."""


def prompts_of(request: CompletionRequest) -> list[str]:
    """The request's prompts as texts (token id prompts are rejected)."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid("prompt", "must not be empty")
    if not all(isinstance(item, str) for item in prompt):
        raise invalid("prompt", "token id prompts are not supported; send the prompt as text")
    if len(prompt) > MAX_PROMPTS:
        raise invalid("prompt", f"has {len(prompt)} prompts; at most {MAX_PROMPTS}")
    return [str(item) for item in prompt]


def _check(request: CompletionRequest) -> None:
    check_supported(request)
    if request.echo:
        raise invalid("echo", "is not supported")
    if request.best_of not in (None, 1):
        raise invalid("best_of", f"only best_of=1 is supported, got {request.best_of}")
    if request.suffix:
        raise invalid("suffix", "is not supported")


async def _gather(calls: Sequence[asyncio.Future[Any]]) -> list[generation_pb2.GenerateResponse]:
    """All results, or the first failure with the other calls cancelled."""
    try:
        return list(await asyncio.gather(*calls))
    except BaseException:
        for call in calls:
            call.cancel()
        raise


def _rename(field: str) -> str:
    if field.startswith("prompt"):
        return "prompt" + field[len("prompt") :]
    if field == "params.top_logprobs":
        return "logprobs"
    return rename_field(field)


class CompletionServing:
    """Serves /v1/completions through the generation service."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def _requests(
        self, request: CompletionRequest, options: CallOptions
    ) -> tuple[str, list[generation_pb2.GenerateRequest]]:
        _check(request)
        prompts = prompts_of(request)
        params = sampling_params(request, request.max_tokens, request.logprobs)
        fmt = response_format(request)
        model = await self.backends.check_model("generation", request.model, options)
        return model, [
            generation_pb2.GenerateRequest(prompt=p, params=params, response_format=fmt) for p in prompts
        ]

    async def create(self, request: CompletionRequest, options: CallOptions) -> CompletionResponse:
        """A whole completion per prompt."""
        model, messages = await self._requests(request, options)
        calls = [
            asyncio.ensure_future(self.backends.unary("generation", "Generate", m, options, rename=_rename))
            for m in messages
        ]
        results = await _gather(calls)
        usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        choices = []
        n = request.n
        for position, result in enumerate(results):
            usage = add_usage(usage, usage_of(result.usage))
            for choice in result.choices:
                choices.append(
                    CompletionChoice(
                        index=position * n + choice.index,
                        text=choice.text,
                        logprobs=None
                        if request.logprobs is None
                        else completion_logprobs(choice.logprobs, 0),
                        finish_reason=finish_reason(choice.finish_reason),
                    )
                )
        name = results[0].model.name or model
        return CompletionResponse(
            id=completion_id("cmpl"), created=now(), model=name, choices=choices, usage=usage
        )

    async def stream(self, request: CompletionRequest, options: CallOptions) -> EventStream:
        """Starts every prompt's stream and waits for their first messages; returns the SSE body."""
        model, messages = await self._requests(request, options)
        streams: list[UpstreamStream] = []
        try:
            for message in messages:
                streams.append(
                    self.backends.stream("generation", "GenerateStream", message, options, _rename)
                )
            await asyncio.gather(*(stream.prime() for stream in streams))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = self._events(model, streams, include_usage, request.n, request.logprobs is not None)
        return EventStream(events, streams)

    async def _events(
        self, model: str, streams: list[UpstreamStream], include_usage: bool, n: int, logprobs: bool
    ) -> AsyncIterator[bytes]:
        response_id, created = completion_id("cmpl"), now()
        usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        finished: set[int] = set()
        offsets: dict[int, int] = {}

        def chunk(index: int, text: str, reason: str | None, lp: CompletionLogprobs | None = None) -> bytes:
            choice = CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=reason)  # type: ignore[arg-type]
            body = CompletionResponse(id=response_id, created=created, model=model, choices=[choice])
            return sse_data(body, include_null_usage=include_usage)

        try:
            async for position, message in merge_streams(streams):
                index = position * n + message.index
                if message.text_delta or (logprobs and message.logprobs):
                    lp = None
                    if logprobs:
                        lp = completion_logprobs(message.logprobs, offsets.get(index, 0))
                        offsets[index] = offsets.get(index, 0) + sum(len(t) for t in lp.tokens)
                    yield chunk(index, message.text_delta, None, lp)
                if message.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED:
                    finished.add(index)
                    yield chunk(index, "", finish_reason(message.finish_reason))
                if message.HasField("usage"):
                    usage = add_usage(usage, usage_of(message.usage))
            for index in range(len(streams) * n):
                if index not in finished:
                    yield chunk(index, "", "stop")
            if include_usage:
                body = CompletionResponse(
                    id=response_id, created=created, model=model, choices=[], usage=usage
                )
                yield sse_data(body)
        except GatewayError as error:
            yield error_event(error)
        yield DONE
