"""Classifier requests and responses <-> the service's dataclasses."""

from __future__ import annotations

from textserve.api import common
from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.entities import EntitiesParams, EntitiesResult, FoundEntity
from textserve.classifier.service import (
    ClassifierDescription,
    ClassifyParams,
    ClassifyResult,
    FeedbackParams,
    Kind,
)
from textserve.classifier.zero_shot import Label
from textserve.core.errors import InvalidInput
from textserve.core.validation import check_routing
from textserve.quality.feedback import FeedbackResult
from textserve.v1 import classifier_pb2, common_pb2

_KINDS: dict[Kind, classifier_pb2.ClassifierInfoResponse.Kind] = {
    "sequence_classification": classifier_pb2.ClassifierInfoResponse.KIND_SEQUENCE_CLASSIFICATION,
    "zero_shot": classifier_pb2.ClassifierInfoResponse.KIND_ZERO_SHOT,
    "linear_head": classifier_pb2.ClassifierInfoResponse.KIND_LINEAR_HEAD,
    "token_classification": classifier_pb2.ClassifierInfoResponse.KIND_TOKEN_CLASSIFICATION,
}

STRATEGY_NAMES: dict[int, str] = {
    classifier_pb2.AGGREGATION_STRATEGY_UNSPECIFIED: "",
    classifier_pb2.AGGREGATION_STRATEGY_NONE: "none",
    classifier_pb2.AGGREGATION_STRATEGY_SIMPLE: "simple",
    classifier_pb2.AGGREGATION_STRATEGY_FIRST: "first",
    classifier_pb2.AGGREGATION_STRATEGY_AVERAGE: "average",
    classifier_pb2.AGGREGATION_STRATEGY_MAX: "max",
}
"""AggregationStrategy values -> the logic's strategy names ("": the configured one)."""


_RESULTS: dict[FeedbackResult, classifier_pb2.FeedbackResponse.Result] = {
    FeedbackResult.JOINED: classifier_pb2.FeedbackResponse.RESULT_JOINED,
    FeedbackResult.DUPLICATE: classifier_pb2.FeedbackResponse.RESULT_DUPLICATE,
}


def classify_params(
    request: classifier_pb2.ClassifyRequest, request_id: str = "", routing: tuple[str, str] = ("", "")
) -> ClassifyParams:
    """ClassifyRequest (and the call's x-request-id) -> ClassifyParams; `routing`: (version, key)
    from the call's metadata, used where the request's own fields are empty."""
    version, key = check_routing(request.model_version or routing[0], request.routing_key or routing[1])
    truncate = common.truncation_flag(request.truncation)
    return ClassifyParams(
        texts=list(request.texts),
        labels=[Label(spec.name, spec.description, tuple(spec.examples)) for spec in request.labels],
        label_set=request.label_set,
        temperature=float(request.temperature),
        top_k=int(request.top_k),
        truncate=truncate,
        skip_cache=request.skip_cache,
        request_id=request_id,
        model_version=version,
        routing_key=key,
    )


def feedback_params(request: classifier_pb2.FeedbackRequest) -> FeedbackParams:
    """FeedbackRequest -> FeedbackParams."""
    return FeedbackParams(request.request_id, int(request.text_index), request.label)


def feedback_response(result: FeedbackResult) -> classifier_pb2.FeedbackResponse:
    """FeedbackResult -> FeedbackResponse."""
    return classifier_pb2.FeedbackResponse(result=_RESULTS[result])


def classify_response(result: ClassifyResult) -> classifier_pb2.ClassifyResponse:
    """ClassifyResult -> ClassifyResponse."""
    response = classifier_pb2.ClassifyResponse(
        model=common.encoder_model_info(result.model, result.version),
        usage=common_pb2.Usage(
            input_tokens=sum(result.tokens),
            truncated_texts=sum(result.truncated),
            cached_texts=result.cached,
        ),
        timing=common.timing(
            result.tokenize_seconds, result.queue_seconds, result.inference_seconds, result.total_seconds
        ),
    )
    for item in result.classifications:
        classification = response.classifications.add(top_label=item.top_label)
        classification.logits.extend(item.logits)
        for label, score in item.scores:
            classification.scores.add(label=label, score=score)
    return response


def info_response(
    description: ClassifierDescription, config: ClassifierServiceConfig
) -> classifier_pb2.ClassifierInfoResponse:
    """ClassifierDescription -> ClassifierInfoResponse."""
    return classifier_pb2.ClassifierInfoResponse(
        kind=_KINDS[description.kind],
        model=common.encoder_model_info(description.model, description.version),
        labels=list(description.labels),
        label_sets=list(description.label_sets),
        limits=common.limits(config.limits, config.server, description.model.max_length),
        max_labels_per_request=description.max_labels_per_request,
        default_temperature=description.default_temperature,
    )


def entities_params(request: classifier_pb2.ExtractEntitiesRequest) -> EntitiesParams:
    """ExtractEntitiesRequest -> EntitiesParams."""
    strategy = STRATEGY_NAMES.get(request.aggregation_strategy)
    if strategy is None:
        raise InvalidInput(
            "aggregation_strategy", f"unknown AggregationStrategy value {request.aggregation_strategy}"
        )
    return EntitiesParams(
        texts=list(request.texts),
        aggregation_strategy=strategy,
        stride=int(request.stride),
        include_tokens=request.include_tokens,
        skip_cache=request.skip_cache,
    )


def _entity(item: FoundEntity) -> classifier_pb2.Entity:
    return classifier_pb2.Entity(
        label=item.label, score=item.score, start=item.start, end=item.end, text=item.text
    )


def entities_response(result: EntitiesResult) -> classifier_pb2.ExtractEntitiesResponse:
    """EntitiesResult -> ExtractEntitiesResponse."""
    response = classifier_pb2.ExtractEntitiesResponse(
        model=common.encoder_model_info(result.model),
        usage=common_pb2.Usage(
            input_tokens=sum(item.input_tokens for item in result.results), cached_texts=result.cached
        ),
        timing=common.timing(
            result.tokenize_seconds, result.queue_seconds, result.inference_seconds, result.total_seconds
        ),
    )
    for item in result.results:
        response.results.add(
            entities=[_entity(entity) for entity in item.entities],
            tokens=[_entity(token) for token in item.tokens],
            windows=item.windows,
        )
    return response
