"""What /v1/completions and /v1/chat/completions share: OpenAI sampling fields -> SamplingParams,
finish reasons and usage back, and the renaming of the generation service's field names.
"""

from __future__ import annotations

import re

from textserve.gateway.errors import invalid
from textserve.gateway.protocol import FinishReason, SamplingFields, Usage
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
    (re.compile(r"^params\."), ""),
)


def rename_field(field: str) -> str:
    """Generation service field (`params.max_new_tokens`, `chat.messages[1]`) -> OpenAI field."""
    for pattern, replacement in _RENAMES:
        field = pattern.sub(replacement, field, count=1)
    return field


def check_supported(request: SamplingFields) -> None:
    """400 for OpenAI features the generation service does not have, naming the field."""
    if request.n != 1:
        raise invalid("n", f"only n=1 is supported, got {request.n}")
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


def sampling_params(request: SamplingFields, max_tokens: int | None) -> generation_pb2.SamplingParams:
    """The SamplingParams message of a request (unset temperature is 1, as OpenAI)."""
    params = generation_pb2.SamplingParams(
        max_new_tokens=max_tokens or 0,
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=request.top_p or 0.0,
        top_k=request.top_k or 0,
        repetition_penalty=request.repetition_penalty or 0.0,
        stop=stop_list(request.stop),
        ignore_eos=request.ignore_eos,
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
