"""The HTTP gateway's settings (the `gateway` section of the configuration)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from textserve.core.config import ClientConfig, ConfigSection


class GatewayConfig(ConfigSection):
    """OpenAI-compatible HTTP gateway."""

    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port."""
    embedding_address: str = "127.0.0.1:50052"
    """Embedding service host:port (/v1/embeddings); empty disables the endpoint."""
    generation_address: str = "127.0.0.1:50054"
    """Generation service host:port (/v1/completions, /v1/chat/completions); empty disables them."""
    classifier_address: str = ""
    """Classifier service host:port (/v1/feedback); empty (the default) disables the endpoint."""
    client: ClientConfig = Field(default_factory=lambda: ClientConfig(timeout_s=300.0))
    """Calls to the services; client.timeout_s is the deadline of a request without x-request-timeout."""
    grace_period_s: float = Field(default=10.0, ge=0.0, le=600.0)
    """On SIGTERM, time in-flight HTTP requests (and streams) get to finish."""
    health_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)
    """Deadline of each backend health check behind /ready and /health."""
    forward_authorization: bool = True
    """Pass the caller's `Authorization` header to the services as gRPC metadata."""
    client_token: SecretStr | None = None
    """Bearer token sent to the services when the caller sent none (or forwarding is off)."""
    client_token_file: Path | None = None
    """File holding client_token (mounted from a Secret); used when client_token is unset."""
    cors_allow_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call from a browser (CORS); empty sends no CORS headers."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest HTTP request body; larger requests get 413."""
