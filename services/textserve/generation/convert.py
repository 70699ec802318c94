"""GenerateRequest / GenerateResponse / GenerateStreamResponse <-> the service's dataclasses."""

from __future__ import annotations

from textserve.api import common
from textserve.core.errors import InvalidInput
from textserve.core.validation import check_routing
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.logprobs import TokenLogprob
from textserve.generation.params import GenerateParams
from textserve.generation.scheduler import FinishStatus
from textserve.generation.service import Choice, GenerateResult, GenerationChunk
from textserve.generation.structured import FormatKind, ResponseFormat
from textserve.runtime.causal_lm import CausalLMInfo
from textserve.v1 import common_pb2, generation_pb2

_FINISH_REASONS = {
    FinishStatus.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishStatus.STOPPED: generation_pb2.FINISH_REASON_STOP,
    FinishStatus.EOS: generation_pb2.FINISH_REASON_EOS,
    FinishStatus.ABORTED: generation_pb2.FINISH_REASON_CANCELLED,
    FinishStatus.EXPIRED: generation_pb2.FINISH_REASON_CANCELLED,
}
_FORMAT_KINDS = {
    generation_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: FormatKind.JSON_OBJECT,
    generation_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: FormatKind.JSON_SCHEMA,
    generation_pb2.RESPONSE_FORMAT_TYPE_REGEX: FormatKind.REGEX,
}


def response_format(request: generation_pb2.GenerateRequest) -> ResponseFormat | None:
    """The request's ResponseFormat (None for unset or UNSPECIFIED; an unknown type is InvalidInput)."""
    if not request.HasField("response_format"):
        return None
    message = request.response_format
    if message.type == generation_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED:
        return None
    kind = _FORMAT_KINDS.get(message.type)
    if kind is None:
        raise InvalidInput("response_format.type", f"unknown response format type {message.type}")
    spec = {FormatKind.JSON_SCHEMA: message.json_schema, FormatKind.REGEX: message.regex}.get(kind, "")
    return ResponseFormat(kind, spec)


def generate_params(
    request: generation_pb2.GenerateRequest, routing: tuple[str, str] = ("", "")
) -> GenerateParams:
    """GenerateRequest -> GenerateParams (values are checked by the service); `routing`: (version,
    key) from the call's metadata, used where the request's own fields are empty."""
    version, key = check_routing(request.model_version or routing[0], request.routing_key or routing[1])
    which = request.WhichOneof("input")
    sampling = request.params
    return GenerateParams(
        prompt=request.prompt if which == "prompt" else None,
        chat=(
            tuple((message.role, message.content) for message in request.chat.messages)
            if which == "chat"
            else None
        ),
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=sampling.repetition_penalty,
        stop=tuple(sampling.stop),
        seed=sampling.seed if sampling.HasField("seed") else None,
        ignore_eos=sampling.ignore_eos,
        skip_cache=request.skip_cache,
        n=sampling.n,
        logprobs=sampling.logprobs,
        top_logprobs=sampling.top_logprobs,
        response_format=response_format(request),
        model_version=version,
        routing_key=key,
    )


def finish_reason(status: FinishStatus | None) -> generation_pb2.FinishReason:
    """FinishStatus -> FinishReason (UNSPECIFIED while not finished)."""
    if status is None:
        return generation_pb2.FINISH_REASON_UNSPECIFIED
    return _FINISH_REASONS[status]


def model_info(info: CausalLMInfo, version: str = "") -> common_pb2.ModelInfo:
    """ModelInfo of the model of `version` (max_input_tokens is the context length)."""
    return common.model_info(
        info.name, info.revision, info.backend, info.device, info.max_context_tokens, version=version
    )


def token_logprobs(items: list[TokenLogprob] | None) -> list[generation_pb2.TokenLogprob]:
    """TokenLogprob dataclasses -> messages (none when not asked for)."""
    return [
        generation_pb2.TokenLogprob(
            token_id=item.token_id,
            token=item.token,
            logprob=item.logprob,
            top_logprobs=[
                generation_pb2.TopLogprob(token_id=top.token_id, token=top.token, logprob=top.logprob)
                for top in item.top
            ],
        )
        for item in items or ()
    ]


def _choice(choice: Choice) -> generation_pb2.GenerationChoice:
    return generation_pb2.GenerationChoice(
        index=choice.index,
        text=choice.text,
        token_ids=choice.token_ids,
        finish_reason=finish_reason(choice.finish),
        logprobs=token_logprobs(choice.logprobs),
    )


def generate_response(result: GenerateResult, info: CausalLMInfo) -> generation_pb2.GenerateResponse:
    """GenerateResult -> GenerateResponse (the model of the version that served it; `info` when
    the result does not say)."""
    return generation_pb2.GenerateResponse(
        text=result.text,
        token_ids=result.token_ids,
        finish_reason=finish_reason(result.finish),
        model=model_info(result.info or info, result.version),
        usage=common_pb2.Usage(
            input_tokens=result.prompt_tokens,
            output_tokens=result.output_tokens,
            cached_texts=1 if result.cached else 0,
        ),
        time_to_first_token_ns=int(result.first_token_seconds * 1e9),
        logprobs=token_logprobs(result.logprobs),
        choices=[_choice(choice) for choice in result.choices],
    )


def stream_response(chunk: GenerationChunk, info: CausalLMInfo) -> generation_pb2.GenerateStreamResponse:
    """GenerationChunk -> GenerateStreamResponse (usage and model only on the last one)."""
    response = generation_pb2.GenerateStreamResponse(
        text_delta=chunk.text,
        token_ids=chunk.token_ids,
        finish_reason=finish_reason(chunk.finish),
        index=chunk.index,
        logprobs=token_logprobs(chunk.logprobs),
    )
    if chunk.last:
        response.usage.CopyFrom(
            common_pb2.Usage(input_tokens=chunk.prompt_tokens, output_tokens=chunk.output_tokens)
        )
        response.model.CopyFrom(model_info(chunk.info or info, chunk.version))
    return response


def info_response(
    info: CausalLMInfo, config: GenerationServiceConfig, version: str = ""
) -> generation_pb2.GenerationInfoResponse:
    """GenerationInfoResponse for the served model of `version` (the primary one, with its
    description) and the configured limits."""
    model = model_info(info, version)
    model.description = info.description
    return generation_pb2.GenerationInfoResponse(
        model=model,
        max_context_tokens=info.max_context_tokens,
        max_new_tokens_limit=config.max_new_tokens_limit,
        max_running_sequences=config.max_running_sequences,
        kv_budget_tokens=config.kv_budget_tokens,
        has_chat_template=info.has_chat_template,
        max_n=config.max_n,
        max_top_logprobs=config.max_top_logprobs,
    )
