"""EmbedRequest/EmbedResponse <-> the service's dataclasses."""

from __future__ import annotations

import numpy as np

from textserve.api import common
from textserve.core.validation import check_routing
from textserve.embedding.service import EmbeddingService, EmbedParams, EmbedResult
from textserve.v1 import common_pb2, embedding_pb2


def embed_params(
    request: embedding_pb2.EmbedRequest, field_prefix: str = "", routing: tuple[str, str] = ("", "")
) -> EmbedParams:
    """EmbedRequest -> EmbedParams; `routing`: (version, key) from the call's metadata, used
    where the request's own fields are empty."""
    version, key = check_routing(
        request.model_version or routing[0], request.routing_key or routing[1], field_prefix
    )
    truncate = common.truncation_flag(request.truncation, f"{field_prefix}truncation")
    return EmbedParams(
        texts=list(request.texts),
        token_ids=[list(item.ids) for item in request.token_inputs],
        normalize=request.normalize,
        truncate=truncate,
        skip_cache=request.skip_cache,
        model_version=version,
        routing_key=key,
    )


def embed_response(result: EmbedResult, service: EmbeddingService) -> embedding_pb2.EmbedResponse:
    """EmbedResult -> EmbedResponse (the model of the version that served it)."""
    info = result.info or service.info
    response = embedding_pb2.EmbedResponse(
        model=common.encoder_model_info(info, result.version),
        usage=common_pb2.Usage(
            input_tokens=sum(result.tokens),
            truncated_texts=sum(result.truncated),
            cached_texts=sum(result.cached),
        ),
        timing=common.timing(
            result.tokenize_seconds, result.queue_seconds, result.inference_seconds, result.total_seconds
        ),
    )
    for vector, tokens, truncated in zip(result.vectors, result.tokens, result.truncated, strict=True):
        item = response.embeddings.add(input_tokens=tokens, truncated=truncated)
        item.values.extend(np.asarray(vector, dtype=np.float32).tolist())
    return response


def info_response(service: EmbeddingService) -> embedding_pb2.InfoResponse:
    """InfoResponse for the loaded model."""
    info = service.info
    config = service.config
    response = embedding_pb2.InfoResponse(
        model=common.encoder_model_info(info, service.versions.primary().version),
        dimensions=info.dimensions,
        pooling=info.pooling,
        limits=common.limits(config.limits, config.server, info.max_length),
        batch_budget=common.batch_budget(service.budget, config.batcher),
        default_truncation=(
            common_pb2.TRUNCATION_POLICY_TRUNCATE
            if config.limits.truncate
            else common_pb2.TRUNCATION_POLICY_REJECT
        ),
    )
    for point in service.tuning_curve:
        response.tuning_curve.add(
            text_tokens=point.text_tokens,
            batch_size=point.batch_size,
            batch_tokens=point.batch_tokens,
            batch_latency_ms=point.batch_latency_ms,
            texts_per_second=point.texts_per_second,
        )
    return response
