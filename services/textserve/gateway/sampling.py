"""What /v1/completions and /v1/chat/completions share: OpenAI sampling fields -> SamplingParams,
`response_format` -> ResponseFormat, finish reasons, usage and logprobs back, and the renaming
of the generation service's field names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from textserve.gateway.errors import invalid
from textserve.gateway.protocol import (
    ChatTokenLogprob,
    CompletionLogprobs,
    FinishReason,
    SamplingFields,
    TopLogprob,
    Usage,
)
from textserve.v1 import common_pb2, generation_pb2

MAX_STOP_SEQUENCES = 16
"""Most stop strings one request may give."""
DEFAULT_TEMPERATURE = 1.0
"""Temperature when the client leaves it unset (OpenAI's default)."""

_FINISH: dict[int, FinishReason] = {
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_EOS: "stop",
    generation_pb2.FINISH_REASON_CANCELLED: "abort",
}

_RENAMES = (
    (re.compile(r"^chat\.messages"), "messages"),
    (re.compile(r"^chat$"), "messages"),
    (re.compile(r"^params\.max_new_tokens"), "max_tokens"),
    (re.compile(r"^response_format\.json_schema"), "response_format.json_schema.schema"),
    (re.compile(r"^params\."), ""),
)


def rename_field(field: str) -> str:
    """Generation service field (`params.max_new_tokens`, `chat.messages[1]`) -> OpenAI field."""
    for pattern, replacement in _RENAMES:
        field = pattern.sub(replacement, field, count=1)
    return field


def check_supported(request: SamplingFields) -> None:
    """400 for OpenAI features the generation service does not have, naming the field."""
    if request.presence_penalty != 0:
        raise invalid("presence_penalty", "is not supported (only 0); repetition_penalty is")
    if request.frequency_penalty != 0:
        raise invalid("frequency_penalty", "is not supported (only 0); repetition_penalty is")
    if request.logit_bias:
        raise invalid("logit_bias", "is not supported")
    if request.stream_options is not None and not request.stream:
        raise invalid("stream_options", "is only allowed with stream=true")


def stop_list(stop: str | list[str] | None) -> list[str]:
    """`stop` as a list, within MAX_STOP_SEQUENCES, each non-empty."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES}")
    for index, item in enumerate(stops):
        if not item:
            raise invalid(f"stop[{index}]", "must not be empty")
    return stops


def sampling_params(
    request: SamplingFields, max_tokens: int | None, top_logprobs: int | None = None
) -> generation_pb2.SamplingParams:
    """The SamplingParams message of a request (unset temperature is 1, as OpenAI); `top_logprobs`
    None asks for no logprobs."""
    params = generation_pb2.SamplingParams(
        max_new_tokens=max_tokens or 0,
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=request.top_p or 0.0,
        top_k=request.top_k or 0,
        repetition_penalty=request.repetition_penalty or 0.0,
        stop=stop_list(request.stop),
        ignore_eos=request.ignore_eos,
        n=request.n,
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs or 0,
    )
    if request.seed is not None:
        params.seed = request.seed % (1 << 64)
    return params


def finish_reason(value: int) -> FinishReason:
    """FinishReason enum -> OpenAI finish_reason (end-of-sequence and stop strings are both "stop")."""
    return _FINISH.get(value, "stop")


def usage_of(usage: common_pb2.Usage) -> Usage:
    """Usage message -> OpenAI usage."""
    prompt, completion = int(usage.input_tokens), int(usage.output_tokens)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def add_usage(total: Usage, more: Usage) -> Usage:
    """Sum of two usages (several prompts in one request)."""
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
    )


def response_format(request: SamplingFields) -> generation_pb2.ResponseFormat | None:
    """The ResponseFormat message of `response_format` (None for unset or text)."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return generation_pb2.ResponseFormat(type=generation_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if fmt.type == "regex":
        if not fmt.regex:
            raise invalid("response_format.regex", "is required for type regex")
        return generation_pb2.ResponseFormat(type=generation_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=fmt.regex)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise invalid("response_format.json_schema.schema", "is required for type json_schema")
    return generation_pb2.ResponseFormat(
        type=generation_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(fmt.json_schema.schema_)
    )


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: Iterable[generation_pb2.TokenLogprob]) -> list[ChatTokenLogprob]:
    """TokenLogprob messages -> the chat `logprobs.content` entries."""
    return [
        ChatTokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            bytes=_bytes(entry.token),
            top_logprobs=[
                TopLogprob(token=top.token, logprob=top.logprob, bytes=_bytes(top.token))
                for top in entry.top_logprobs
            ],
        )
        for entry in entries
    ]


def completion_logprobs(entries: Iterable[generation_pb2.TokenLogprob], offset: int) -> CompletionLogprobs:
    """TokenLogprob messages -> the completions `logprobs` object; `offset` is the text offset of
    the first token (the length of the tokens before it, as each token decodes alone)."""
    result = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for entry in entries:
        result.tokens.append(entry.token)
        result.token_logprobs.append(entry.logprob)
        result.text_offset.append(offset)
        offset += len(entry.token)
        assert result.top_logprobs is not None
        result.top_logprobs.append({top.token: top.logprob for top in entry.top_logprobs})
    return result
