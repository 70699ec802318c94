"""A generation request as the logic sees it, and the checks of its parameters.

Every failed check raises InvalidInput naming the request field and the limit or rule.
Token-level checks (prompt length, context) need the tokenizer and live in the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from textserve.core.errors import InvalidInput
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.sampling import SamplingConfig
from textserve.generation.structured import FormatKind, ResponseFormat


@dataclass(frozen=True)
class GenerateParams:
    """One Generate / GenerateStream call; exactly one of `prompt` and `chat` is set."""

    prompt: str | None = None
    chat: tuple[tuple[str, str], ...] | None = None
    """(role, content) pairs."""
    max_new_tokens: int = 0
    """0 uses the configured default (cut to what fits in the context)."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    """0 (unset) means 1."""
    repetition_penalty: float = 0.0
    """0 (unset) means 1."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    skip_cache: bool = False
    n: int = 1
    """Sequences from the one prompt (0 means 1)."""
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: ResponseFormat | None = None
    """Structured output; None is free text."""
    model_version: str = ""
    """Version to serve this request; empty: the traffic split decides."""
    routing_key: str = ""
    """Requests with the same key reach the same version while the weights stand."""


def check_input(params: GenerateParams, config: GenerationServiceConfig) -> None:
    """The prompt or chat messages are present and within the character limit."""
    limit = config.limits.max_text_chars
    if params.prompt is None and params.chat is None:
        raise InvalidInput("input", "set either prompt or chat")
    if params.prompt is not None:
        if not params.prompt:
            raise InvalidInput("prompt", "must not be empty")
        if len(params.prompt) > limit:
            raise InvalidInput("prompt", f"has {len(params.prompt)} characters; max_text_chars={limit}")
        return
    assert params.chat is not None
    if not params.chat:
        raise InvalidInput("chat.messages", "must contain at least one message")
    total = 0
    for index, (role, content) in enumerate(params.chat):
        if not role.strip():
            raise InvalidInput(f"chat.messages[{index}].role", "must not be empty")
        total += len(role) + len(content)
    if total > limit:
        raise InvalidInput("chat.messages", f"have {total} characters in all; max_text_chars={limit}")


def check_stop(stop: tuple[str, ...], config: GenerationServiceConfig) -> None:
    """Stop sequences: few enough, each non-empty and short enough."""
    if len(stop) > config.max_stop_sequences:
        raise InvalidInput(
            "params.stop", f"has {len(stop)} sequences; max_stop_sequences={config.max_stop_sequences}"
        )
    for index, item in enumerate(stop):
        if not item:
            raise InvalidInput(f"params.stop[{index}]", "must not be empty")
        if len(item) > config.max_stop_chars:
            raise InvalidInput(
                f"params.stop[{index}]", f"has {len(item)} characters; max_stop_chars={config.max_stop_chars}"
            )


def check_max_new_tokens(requested: int, config: GenerationServiceConfig) -> None:
    """max_new_tokens within the configured limit (0 means the default)."""
    if requested < 0 or requested > config.max_new_tokens_limit:
        raise InvalidInput(
            "params.max_new_tokens",
            f"is {requested}; must be at most max_new_tokens_limit={config.max_new_tokens_limit}",
        )


def sampling_config(params: GenerateParams) -> SamplingConfig:
    """Checked sampling parameters with the proto3 defaults resolved (0 -> unset)."""
    temperature = params.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(
            "params.temperature", f"must be a finite number >= 0 (0 is greedy); got {temperature}"
        )
    top_p = params.top_p or 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidInput("params.top_p", f"must be in (0, 1] (0 leaves it unset); got {params.top_p}")
    penalty = params.repetition_penalty or 1.0
    if not math.isfinite(penalty) or penalty <= 0:
        raise InvalidInput(
            "params.repetition_penalty", f"must be a finite number > 0 (0 leaves it unset); got {penalty}"
        )
    if params.top_k < 0:
        raise InvalidInput("params.top_k", f"must be >= 0 (0 disables); got {params.top_k}")
    return SamplingConfig(
        temperature=temperature,
        top_k=params.top_k,
        top_p=top_p,
        repetition_penalty=penalty,
        seed=params.seed,
    )


def check_n(n: int, config: GenerationServiceConfig) -> int:
    """The number of sequences (0 means 1), within max_n."""
    if n < 0 or n > config.max_n:
        raise InvalidInput("params.n", f"is {n}; must be at most max_n={config.max_n}")
    return n or 1


def logprobs_count(params: GenerateParams, config: GenerationServiceConfig) -> int | None:
    """None without logprobs, else how many alternatives per position (within max_top_logprobs)."""
    if params.top_logprobs < 0 or params.top_logprobs > config.max_top_logprobs:
        raise InvalidInput(
            "params.top_logprobs",
            f"is {params.top_logprobs}; must be at most max_top_logprobs={config.max_top_logprobs}",
        )
    if not params.logprobs:
        if params.top_logprobs:
            raise InvalidInput("params.top_logprobs", "requires logprobs=true")
        return None
    return params.top_logprobs


def check_response_format(response_format: ResponseFormat | None, config: GenerationServiceConfig) -> None:
    """A schema or regex is present and within max_response_format_chars (compiling checks the rest)."""
    if response_format is None or response_format.kind is FormatKind.JSON_OBJECT:
        return
    spec, field_name = response_format.spec, response_format.field
    if not spec.strip():
        raise InvalidInput(field_name, f"must not be empty for type {response_format.kind.value}")
    limit = config.max_response_format_chars
    if len(spec) > limit:
        raise InvalidInput(field_name, f"has {len(spec)} characters; max_response_format_chars={limit}")
