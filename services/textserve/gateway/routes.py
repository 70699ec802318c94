"""HTTP routes of the gateway: transport only (parse, call the serving module, write the response).

Unary answers race their work against the client's disconnect; streamed answers are
`text/event-stream` responses that cancel their gRPC calls however they end. /health is
liveness (200 while the process serves HTTP, with each service's status in the body);
/ready is readiness (503 until every configured service reports SERVING).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from textserve.gateway.calls import call_options
from textserve.gateway.errors import GatewayError
from textserve.gateway.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
)
from textserve.gateway.state import Gateway
from textserve.gateway.streaming import (
    CLIENT_CLOSED_REQUEST,
    ClientGone,
    EventStream,
    EventStreamResponse,
    cancel_on_disconnect,
)

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Bad input: the message names the field (`param`) and the limit."),
        (401, "The services require a bearer token and none was sent."),
        (403, "The bearer token was not accepted."),
        (404, "Unknown model, or this gateway has no such service."),
        (413, "Request body larger than max_body_bytes."),
        (429, "A service's queue is full; retry after Retry-After seconds."),
        (500, "Internal error."),
        (503, "A service is down or still loading; retry after Retry-After seconds."),
        (504, "The deadline (client.timeout_s or x-request-timeout) passed."),
    )
}


def _streamed(schema: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    description = (
        f"JSON body; with `stream: true`, server-sent events, each `data: <{schema.__name__}>`, "
        "ending with `data: [DONE]`."
    )
    return {
        200: {
            "description": description,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "description": f"`data: <{schema.__name__}>` events"}
                }
            },
        },
        **_ERRORS,
    }


def get_gateway(request: Request) -> Gateway:
    """The gateway state of the app serving this request."""
    gateway: Gateway = request.app.state.gateway
    return gateway


def _json(body: BaseModel) -> Response:
    return Response(content=body.model_dump_json(), media_type="application/json")


def _gone() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _answer(request: Request, work: Awaitable[BaseModel | EventStream]) -> Response:
    """The JSON body, or the event stream, `work` answers, raced against the client's
    disconnect (a client gone: 499)."""
    try:
        answer = await cancel_on_disconnect(request, work)
    except ClientGone:
        return _gone()
    if isinstance(answer, EventStream):
        return EventStreamResponse(answer)
    return _json(answer)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    tags=["OpenAI"],
    summary="Create embeddings",
)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, gateway: Gateway = Depends(get_gateway)
) -> Response:
    """Embeds a text, a list of texts, or token id lists (OpenAI embeddings API)."""
    options = call_options(request, gateway.config)
    return await _answer(request, gateway.embeddings.create(body, options))


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=_streamed(CompletionResponse),
    tags=["OpenAI"],
    summary="Create a completion",
)
async def create_completion(
    body: CompletionRequest, request: Request, gateway: Gateway = Depends(get_gateway)
) -> Response:
    """Continues one prompt, or several (OpenAI completions API); streams with `stream: true`."""
    options = call_options(request, gateway.config)
    serving = gateway.completions
    return await _answer(
        request, serving.stream(body, options) if body.stream else serving.create(body, options)
    )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_streamed(ChatCompletionChunk),
    tags=["OpenAI"],
    summary="Create a chat completion",
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, gateway: Gateway = Depends(get_gateway)
) -> Response:
    """Answers a conversation (OpenAI chat completions API); streams chunks with `stream: true`."""
    options = call_options(request, gateway.config)
    serving = gateway.chat
    return await _answer(
        request, serving.stream(body, options) if body.stream else serving.create(body, options)
    )


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=_ERRORS,
    tags=["textserve"],
    summary="Give the true label of a classified text",
)
async def create_feedback(
    body: FeedbackRequest, request: Request, gateway: Gateway = Depends(get_gateway)
) -> Response:
    """Joins ground truth with the classifier's earlier prediction for text `index` of the
    Classify call whose x-request-id was `request_id` (404 when unknown or expired; a second
    feedback for the same text answers `duplicate` and is not counted again)."""
    options = call_options(request, gateway.config)
    return await _answer(request, gateway.feedback.create(body, options))


@router.get("/v1/models", response_model=ModelList, tags=["OpenAI"], summary="List models")
async def list_models(request: Request, gateway: Gateway = Depends(get_gateway)) -> ModelList:
    """The models of the services that answer now (embedding and generation)."""
    served = await gateway.backends.served_models(call_options(request, gateway.config))
    return ModelList(data=[ModelCard(id=name, created=gateway.started) for _, name in served])


@router.get(
    "/v1/models/{model}",
    response_model=ModelCard,
    responses=_ERRORS,
    tags=["OpenAI"],
    summary="Retrieve a model",
)
async def retrieve_model(model: str, request: Request, gateway: Gateway = Depends(get_gateway)) -> ModelCard:
    """One served model, or 404."""
    served = await gateway.backends.served_models(call_options(request, gateway.config))
    if model not in {name for _, name in served}:
        raise GatewayError(
            404, f"model: the model {model!r} does not exist", "not_found_error", "model", "model_not_found"
        )
    return ModelCard(id=model, created=gateway.started)


class HealthReport(BaseModel):
    """Body of /health and /ready."""

    status: str
    """ok (every configured service SERVING) or degraded."""
    backends: dict[str, str]
    """grpc.health.v1 status of each configured service (SERVING, NOT_SERVING, UNAVAILABLE, ...)."""


async def _report(gateway: Gateway) -> HealthReport:
    backends = await gateway.backends.health()
    ok = all(status == "SERVING" for status in backends.values())
    return HealthReport(status="ok" if ok else "degraded", backends=backends)


@router.get("/health", response_model=HealthReport, tags=["Operations"], summary="Liveness")
async def health(gateway: Gateway = Depends(get_gateway)) -> HealthReport:
    """200 while the gateway serves HTTP; the body shows each service's health."""
    return await _report(gateway)


@router.get(
    "/ready",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "A configured service is not SERVING."}},
    tags=["Operations"],
    summary="Readiness",
)
async def ready(gateway: Gateway = Depends(get_gateway)) -> Response:
    """200 when every configured service reports SERVING, else 503."""
    report = await _report(gateway)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)
