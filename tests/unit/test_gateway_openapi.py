"""The committed docs/openapi.json is what the gateway generates, and the error table is complete."""

from __future__ import annotations

import grpc
from textserve.core.errors import InvalidInput, NotReady
from textserve.gateway import openapi_dump
from textserve.gateway.errors import STATUS_MAP, from_status, http_error
from textserve.transport.status import error_from_status


def test_committed_openapi_is_fresh() -> None:
    """Regenerating gives the committed file byte for byte (run `make openapi` when this fails)."""
    committed = openapi_dump.DEFAULT_PATH.read_text()
    assert committed == openapi_dump.render(openapi_dump.openapi_document()), "run `make openapi`"


def test_openapi_documents_the_openai_routes_and_errors() -> None:
    document = openapi_dump.openapi_document()
    assert {"/v1/embeddings", "/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(
        document["paths"]
    )
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "429", "503", "504"} <= set(chat)
    assert "422" not in chat
    assert "text/event-stream" in chat["200"]["content"]
    assert "ChatCompletionChunk" in document["components"]["schemas"]


def test_every_grpc_status_but_ok_has_an_http_status() -> None:
    assert set(STATUS_MAP) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    }
    for code, status in expected.items():
        assert from_status(code, "x").status == status


def test_field_messages_set_param_and_rename() -> None:
    error = from_status(grpc.StatusCode.INVALID_ARGUMENT, "texts[3]: must not be empty", lambda f: "input[3]")
    assert (error.param, error.message, error.code) == (
        "input[3]",
        "input[3]: must not be empty",
        "invalid_argument",
    )
    plain = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full: 3 texts waiting")
    assert plain.param is None and plain.headers() == {"retry-after": "1"}


def test_the_param_comes_from_the_field_of_the_error_not_its_message() -> None:
    """The BadRequest field of a service's INVALID_ARGUMENT gives `param` (renamed), not a parse."""
    forwarded = error_from_status(
        grpc.StatusCode.INVALID_ARGUMENT, "worded otherwise", violation=("texts[3]", "must not be empty")
    )
    error = http_error(forwarded, lambda field: field.replace("texts", "input"))
    assert (error.status, error.param, error.message, error.code) == (
        400,
        "input[3]",
        "input[3]: must not be empty",
        "invalid_argument",
    )
    down = http_error(NotReady("connection refused"), upstream="embedding")
    assert (down.status, down.message, down.code) == (
        503,
        "embedding service unavailable: connection refused",
        "unavailable",
    )
    assert http_error(InvalidInput("", "x-request-timeout: must be a number")).param is None
