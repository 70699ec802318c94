"""The gateway's FastAPI app: routes, error handlers, middleware, and a lifespan that owns the channels.

`create_app(config)` builds it; the lifespan opens one gRPC channel per configured
service on start-up and closes them on shutdown (after uvicorn has drained the HTTP
requests), so every request reuses long-lived channels.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from textserve.gateway.backends import Backends
from textserve.gateway.config import GatewayConfig
from textserve.gateway.errors import install_error_handlers
from textserve.gateway.middleware import BodyLimit, HttpMetrics
from textserve.gateway.protocol import ChatChunkChoice, ChatCompletionChunk, ChatDelta
from textserve.gateway.routes import router
from textserve.gateway.state import Gateway

TITLE = "textserve OpenAI-compatible gateway"
DESCRIPTION = (
    "OpenAI-compatible HTTP API in front of the textserve gRPC services: embeddings, completions "
    "and chat completions (with server-sent event streams). Errors use the OpenAI error shape; "
    "`x-request-timeout` (seconds) shortens the deadline, and the `Authorization` header is "
    "passed to the services."
)


def openapi_fixups(schema: dict[str, Any]) -> dict[str, Any]:
    """Bad bodies are 400 in the OpenAI error shape, not FastAPI's 422; stream chunks get schemas."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in (ChatCompletionChunk, ChatChunkChoice, ChatDelta):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(def_name, definition)
        components.setdefault(model.__name__, model_schema)
    return schema


def create_app(config: GatewayConfig | None = None) -> FastAPI:
    """The gateway app for `config` (defaults when None)."""
    config = config or GatewayConfig()
    gateway = Gateway(config, Backends(config))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.backends.open()
        try:
            yield
        finally:
            await gateway.backends.close()

    from textserve import __version__

    app = FastAPI(title=TITLE, description=DESCRIPTION, version=__version__, lifespan=lifespan)
    app.state.gateway = gateway

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_fixups(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    app.include_router(router)
    if config.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(HttpMetrics, routes=[*app.router.routes, *router.routes])
    return app
