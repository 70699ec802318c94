"""Tokenizer requests and responses <-> the service's dataclasses."""

from __future__ import annotations

from textserve.api import common
from textserve.tokenizer.service import (
    ChatParams,
    ChatResult,
    ChatTurn,
    CountParams,
    CountResult,
    DetokenizeParams,
    DetokenizeResult,
    TokenizeParams,
    TokenizeResult,
    TokenizerInfo,
)
from textserve.v1 import common_pb2, tokenizer_pb2


def model_info(info: TokenizerInfo) -> common_pb2.ModelInfo:
    """ModelInfo of a tokenizer (backend "tokenizers": the Hugging Face fast tokenizer)."""
    return common.model_info(info.name, info.revision, "tokenizers", "cpu", info.max_length)


def tokenize_params(request: tokenizer_pb2.TokenizeRequest) -> TokenizeParams:
    """TokenizeRequest -> TokenizeParams."""
    return TokenizeParams(
        texts=list(request.texts),
        model=request.model,
        add_special_tokens=request.add_special_tokens,
        return_tokens=request.return_tokens,
        return_offsets=request.return_offsets,
        max_tokens=request.max_tokens,
    )


def tokenize_response(result: TokenizeResult) -> tokenizer_pb2.TokenizeResponse:
    """TokenizeResult -> TokenizeResponse."""
    response = tokenizer_pb2.TokenizeResponse(
        model=model_info(result.model),
        usage=common_pb2.Usage(
            input_tokens=sum(len(e.ids) for e in result.encodings),
            truncated_texts=sum(e.truncated for e in result.encodings),
        ),
    )
    for encoding in result.encodings:
        item = response.encodings.add(
            truncated=encoding.truncated, untruncated_tokens=encoding.untruncated_tokens
        )
        item.ids.extend(encoding.ids)
        item.tokens.extend(encoding.tokens)
        for start, end in encoding.offsets:
            item.offsets.add(start=start, end=end)
    return response


def detokenize_params(request: tokenizer_pb2.DetokenizeRequest) -> DetokenizeParams:
    """DetokenizeRequest -> DetokenizeParams."""
    return DetokenizeParams(
        sequences=[list(item.ids) for item in request.sequences],
        model=request.model,
        skip_special_tokens=request.skip_special_tokens,
    )


def detokenize_response(result: DetokenizeResult) -> tokenizer_pb2.DetokenizeResponse:
    """DetokenizeResult -> DetokenizeResponse."""
    return tokenizer_pb2.DetokenizeResponse(texts=result.texts, model=model_info(result.model))


def count_params(request: tokenizer_pb2.CountTokensRequest) -> CountParams:
    """CountTokensRequest -> CountParams."""
    return CountParams(
        texts=list(request.texts), model=request.model, add_special_tokens=request.add_special_tokens
    )


def count_response(result: CountResult) -> tokenizer_pb2.CountTokensResponse:
    """CountResult -> CountTokensResponse."""
    return tokenizer_pb2.CountTokensResponse(
        counts=result.counts, total=sum(result.counts), model=model_info(result.model)
    )


def chat_params(request: tokenizer_pb2.ApplyChatTemplateRequest) -> ChatParams:
    """ApplyChatTemplateRequest -> ChatParams."""
    return ChatParams(
        messages=[ChatTurn(m.role, m.content) for m in request.messages],
        model=request.model,
        add_generation_prompt=request.add_generation_prompt,
    )


def chat_response(result: ChatResult) -> tokenizer_pb2.ApplyChatTemplateResponse:
    """ChatResult -> ApplyChatTemplateResponse."""
    return tokenizer_pb2.ApplyChatTemplateResponse(
        prompt=result.prompt, ids=result.ids, model=model_info(result.model)
    )


def list_models_response(models: list[TokenizerInfo]) -> tokenizer_pb2.ListModelsResponse:
    """The loaded tokenizers, the default first."""
    return tokenizer_pb2.ListModelsResponse(models=[model_info(info) for info in models])
