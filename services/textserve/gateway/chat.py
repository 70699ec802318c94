"""POST /v1/chat/completions: OpenAI chat request -> GenerationService (ChatInput) -> response or SSE.

Messages go to the service as ChatInput (rendered with the model's chat template there);
text content parts are joined with newlines and `developer` is treated as `system`. `n`,
`logprobs`/`top_logprobs` and `response_format` go to the service as they are (one call
makes all n choices). A stream sends the OpenAI chunk sequence: a first chunk with the
assistant role per choice, one chunk per text delta (with its tokens' logprobs when asked),
a chunk per choice with its finish reason and an empty delta, optionally a usage chunk with
empty choices, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from textserve.gateway.backends import Backends, UpstreamStream
from textserve.gateway.calls import CallOptions
from textserve.gateway.errors import GatewayError, invalid
from textserve.gateway.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatMessageParam,
    completion_id,
    now,
)
from textserve.gateway.sampling import (
    chat_logprobs,
    check_supported,
    finish_reason,
    rename_field,
    response_format,
    sampling_params,
    usage_of,
)
from textserve.gateway.streaming import DONE, EventStream, error_event, merge_streams, sse_data
from textserve.v1 import common_pb2, generation_pb2

_ROLE_ALIASES = {"developer": "system"}


def message_text(message: ChatMessageParam, index: int) -> str:
    """The text of a message (text parts joined with newlines; other parts are rejected)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for position, part in enumerate(content):
        if part.type != "text":
            raise invalid(
                f"messages[{index}].content[{position}].type",
                f"only text parts are supported, got {part.type!r}",
            )
        texts.append(part.text)
    return "\n".join(texts)


def chat_input(request: ChatCompletionRequest) -> generation_pb2.ChatInput:
    """The ChatInput of a request."""
    chat = generation_pb2.ChatInput()
    for index, message in enumerate(request.messages):
        role = _ROLE_ALIASES.get(message.role, message.role)
        chat.messages.append(common_pb2.ChatMessage(role=role, content=message_text(message, index)))
    return chat


def _check(request: ChatCompletionRequest) -> None:
    check_supported(request)
    if request.top_logprobs is not None and not request.logprobs:
        raise invalid("top_logprobs", "requires logprobs=true")
    if request.tools:
        raise invalid("tools", "tool calling is not supported")
    if request.tool_choice not in (None, "none"):
        raise invalid("tool_choice", "tool calling is not supported")


class ChatServing:
    """Serves /v1/chat/completions through the generation service."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def _request(
        self, request: ChatCompletionRequest, options: CallOptions
    ) -> tuple[str, generation_pb2.GenerateRequest]:
        _check(request)
        max_tokens = request.max_completion_tokens or request.max_tokens
        top = (request.top_logprobs or 0) if request.logprobs else None
        message = generation_pb2.GenerateRequest(
            chat=chat_input(request),
            params=sampling_params(request, max_tokens, top),
            response_format=response_format(request),
        )
        model = await self.backends.check_model("generation", request.model, options)
        return model, message

    async def create(self, request: ChatCompletionRequest, options: CallOptions) -> ChatCompletionResponse:
        """The whole assistant message."""
        model, message = await self._request(request, options)
        result = await self.backends.unary("generation", "Generate", message, options, rename=rename_field)
        choices = [
            ChatChoice(
                index=choice.index,
                message=ChatMessage(content=choice.text),
                logprobs=ChatLogprobs(content=chat_logprobs(choice.logprobs)) if request.logprobs else None,
                finish_reason=finish_reason(choice.finish_reason),
            )
            for choice in result.choices
        ]
        return ChatCompletionResponse(
            id=completion_id("chatcmpl"),
            created=now(),
            model=result.model.name or model,
            choices=choices,
            usage=usage_of(result.usage),
        )

    async def stream(self, request: ChatCompletionRequest, options: CallOptions) -> EventStream:
        """Starts the stream and waits for its first message; returns the SSE body."""
        model, message = await self._request(request, options)
        upstream = self.backends.stream("generation", "GenerateStream", message, options, rename_field)
        try:
            await upstream.prime()
        except BaseException:
            upstream.cancel()
            raise
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = self._events(model, upstream, include_usage, request.n, bool(request.logprobs))
        return EventStream(events, [upstream])

    async def _events(
        self, model: str, upstream: UpstreamStream, include_usage: bool, n: int, logprobs: bool
    ) -> AsyncIterator[bytes]:
        response_id, created = completion_id("chatcmpl"), now()

        def chunk(
            index: int, delta: ChatDelta, reason: str | None = None, lp: ChatLogprobs | None = None
        ) -> bytes:
            choice = ChatChunkChoice(index=index, delta=delta, logprobs=lp, finish_reason=reason)  # type: ignore[arg-type]
            body = ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice])
            return sse_data(body, include_null_usage=include_usage)

        for index in range(n):
            yield chunk(index, ChatDelta(role="assistant", content=""))
        usage = None
        finished: set[int] = set()
        try:
            async for _, message in merge_streams([upstream]):
                index = message.index
                if message.text_delta or (logprobs and message.logprobs):
                    lp = ChatLogprobs(content=chat_logprobs(message.logprobs)) if logprobs else None
                    yield chunk(index, ChatDelta(content=message.text_delta), lp=lp)
                if message.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED:
                    finished.add(index)
                    yield chunk(index, ChatDelta(), finish_reason(message.finish_reason))
                if message.HasField("usage"):
                    usage = usage_of(message.usage)
            for index in range(n):
                if index not in finished:
                    yield chunk(index, ChatDelta(), "stop")
            if include_usage and usage is not None:
                yield sse_data(
                    ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage)
                )
        except GatewayError as error:
            yield error_event(error)
        yield DONE
