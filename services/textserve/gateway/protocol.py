"""OpenAI wire types (pydantic) of the gateway's endpoints.

Requests accept what the OpenAI API accepts; unknown fields are ignored (clients send
many), while known features the services do not have (tools, penalties, echo) are rejected
by the serving modules with a 400 naming the field. A few extensions known from other
OpenAI-compatible servers (vLLM) are accepted: `top_k`, `repetition_penalty`, `ignore_eos`,
`response_format` on /v1/completions and its `regex` type, and `normalize` for embeddings.
Responses match OpenAI's field for field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _drop_none(value: Any) -> bool:
    return value is None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -----------------------------------------------------------------------------
class ErrorDetail(_Response):
    """The `error` object of an OpenAI error response."""

    message: str
    """What went wrong, naming the field and the limit where there is one."""
    type: str
    """Error class (invalid_request_error, rate_limit_error, service_unavailable_error, ...)."""
    param: str | None = None
    """Request field at fault, when known (e.g. `input[3]`, `messages`)."""
    code: str | None = None
    """Machine-readable code: the gRPC status name in lower case, or a gateway code."""


class ErrorResponse(_Response):
    """Body of every non-2xx response (and of an `error` event inside a stream)."""

    error: ErrorDetail


# --- shared -----------------------------------------------------------------------------
class Usage(_Response):
    """Token accounting."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class EmbeddingUsage(_Response):
    """Token accounting of an embeddings request."""

    prompt_tokens: int
    total_tokens: int


class StreamOptions(_Request):
    """Options of a streamed response."""

    include_usage: bool = False
    """Send a last chunk with empty `choices` and the request's `usage`."""


def completion_id(prefix: str) -> str:
    """A fresh response id (`chatcmpl-...`, `cmpl-...`)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """`created`: Unix seconds."""
    return int(time.time())


# --- models -----------------------------------------------------------------------------
class ModelCard(_Response):
    """One served model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "textserve"


class ModelList(_Response):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- embeddings -------------------------------------------------------------------------
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Request):
    """POST /v1/embeddings."""

    model: str
    """Served embedding model (see GET /v1/models)."""
    input: EmbeddingInput
    """A text, a list of texts, a token id list, or a list of token id lists (ids used as given)."""
    encoding_format: Literal["float", "base64"] = "float"
    """float: JSON numbers; base64: little-endian float32 bytes, base64-encoded."""
    dimensions: int | None = Field(default=None, ge=1)
    """Only the model's own dimensions are accepted (no shortening)."""
    user: str | None = None
    """Ignored."""
    normalize: bool = True
    """Extension: unit-length vectors (OpenAI's are); false returns the raw pooled vectors."""


class EmbeddingData(_Response):
    """One vector."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(_Response):
    """Response of POST /v1/embeddings."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# --- generation requests ----------------------------------------------------------------
class JsonSchemaFormat(_Request):
    """The `json_schema` of a json_schema response format."""

    name: str = "response"
    """Name of the schema (not used for decoding)."""
    description: str | None = None
    """Ignored."""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON Schema the output must be valid under."""
    strict: bool | None = None
    """Ignored: the output always follows the schema (properties not in it are not generated)."""


class ResponseFormatParam(_Request):
    """`response_format`: free text, any JSON object, JSON under a schema, or (extension) a regex."""

    type: Literal["text", "json_object", "json_schema", "regex"]
    """text: unconstrained; json_object: a JSON object; json_schema: valid under `json_schema.schema`;
    regex (extension): the whole output matches `regex`."""
    json_schema: JsonSchemaFormat | None = None
    """Required with type json_schema."""
    regex: str | None = None
    """Extension: required with type regex."""


class SamplingFields(_Request):
    """Fields /v1/completions and /v1/chat/completions share."""

    model: str
    """Served generation model (see GET /v1/models)."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """Sampling temperature; 0 is greedy; unset is 1 (as OpenAI)."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    """Nucleus sampling mass; unset is 1."""
    stop: str | list[str] | None = None
    """Up to 16 strings that end generation; not included in the output."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    n: int = Field(default=1, ge=1)
    """Choices per prompt (at most the generation service's max_n); sampled from one prompt, whose
    tokens usage counts once; with a seed, choice i samples with seed + i."""
    stream: bool = False
    """Send server-sent events, ending with `data: [DONE]`."""
    stream_options: StreamOptions | None = None
    """With stream: include_usage adds a usage chunk."""
    presence_penalty: float = 0.0
    """Only 0 is supported."""
    frequency_penalty: float = 0.0
    """Only 0 is supported."""
    logit_bias: dict[str, float] | None = None
    """Not supported (must be empty)."""
    user: str | None = None
    """Ignored."""
    top_k: int | None = Field(default=None, ge=0)
    """Extension: keep only the k most likely tokens (0 or unset disables)."""
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    """Extension: repetition penalty (1 is none)."""
    ignore_eos: bool = False
    """Extension: keep generating past the end-of-sequence token."""
    response_format: ResponseFormatParam | None = None
    """Structured output (constrained decoding): json_object, json_schema (or the regex extension)."""


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    """A prompt or a list of prompts (text; token id prompts are rejected)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate per prompt; unset uses the service default."""
    echo: bool = False
    """Not supported (must be false)."""
    logprobs: int | None = Field(default=None, ge=0)
    """Log-probabilities of the generated tokens and of the `logprobs` most likely tokens at each
    position (0 gives the generated tokens' only)."""
    best_of: int | None = None
    """Only 1 is supported."""
    suffix: str | None = None
    """Not supported (must be unset)."""


class TextContentPart(_Request):
    """A text part of a message's content."""

    type: str
    """Only "text" is supported."""
    text: str = ""


class ChatMessageParam(_Request):
    """One input message."""

    role: str
    """system, developer (treated as system), user, assistant, ..."""
    content: str | list[TextContentPart] | None = None
    """Text, or a list of text parts (joined with newlines)."""
    name: str | None = None
    """Ignored."""


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessageParam], Field(min_length=1)]
    """The conversation, rendered with the model's chat template."""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate; unset uses max_tokens, else the service default."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Deprecated alias of max_completion_tokens."""
    logprobs: bool | None = None
    """Return the log-probability of each generated token."""
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """With logprobs: the most likely tokens at each position (0-20)."""
    tools: list[dict[str, Any]] | None = None
    """Not supported (must be unset or empty)."""
    tool_choice: Any = None
    """Only unset or "none"."""


# --- generation responses ---------------------------------------------------------------
FinishReason = Literal["stop", "length", "abort"]


class CompletionLogprobs(_Response):
    """Log-probabilities of a completion choice (the legacy completions format)."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class TopLogprob(_Response):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(_Response):
    """A generated token with its log-probability and the most likely tokens at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Response):
    """Log-probabilities of a chat choice."""

    content: list[ChatTokenLogprob] | None = None
    refusal: None = None


class CompletionChoice(_Response):
    """One choice of a completion."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(_Response):
    """Response of POST /v1/completions (and, with object text_completion, each stream chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = Field(default=None, exclude_if=_drop_none)


class ChatMessage(_Response):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Response):
    """One choice of a chat completion."""

    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(_Response):
    """Response of POST /v1/chat/completions."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    system_fingerprint: str | None = None
    usage: Usage


class ChatDelta(_Response):
    """New content of a streamed chat completion (fields left out when unset)."""

    role: Literal["assistant"] | None = Field(default=None, exclude_if=_drop_none)
    content: str | None = Field(default=None, exclude_if=_drop_none)


class ChatChunkChoice(_Response):
    """One choice of a chat completion chunk."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = Field(default=None, exclude_if=_drop_none)


# --- feedback (textserve extension) -----------------------------------------------------
class FeedbackRequest(_Request):
    """POST /v1/feedback: the true label of one text of an earlier classification."""

    request_id: str = Field(min_length=1, max_length=128)
    """x-request-id of the Classify call (sent by the caller, or returned by the classifier)."""
    index: int = Field(ge=0)
    """Position of the text in that call (0-based)."""
    label: str = Field(min_length=1)
    """The true label; one of the classifier's labels."""


class FeedbackResponse(_Response):
    """Response of POST /v1/feedback."""

    object: Literal["feedback"] = "feedback"
    result: Literal["joined", "duplicate"]
    """joined: counted in the live accuracy; duplicate: that text had feedback already (not counted)."""
