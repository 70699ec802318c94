from textserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "normalize", "truncation", "skip_cache", "token_inputs", "model_version", "routing_key")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    truncation: _common_pb2.TruncationPolicy
    skip_cache: bool
    token_inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenIds]
    model_version: str
    routing_key: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., truncation: _Optional[_Union[_common_pb2.TruncationPolicy, str]] = ..., skip_cache: _Optional[bool] = ..., token_inputs: _Optional[_Iterable[_Union[_common_pb2.TokenIds, _Mapping]]] = ..., model_version: _Optional[str] = ..., routing_key: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "input_tokens", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    input_tokens: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., input_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model", "usage", "timing")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model: _common_pb2.ModelInfo
    usage: _common_pb2.Usage
    timing: _common_pb2.Timing
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("request_id", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: EmbedRequest
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[EmbedRequest, _Mapping]] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("request_id", "response")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: EmbedResponse
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[EmbedResponse, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "dimensions", "pooling", "limits", "batch_budget", "default_truncation", "tuning_curve")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    TUNING_CURVE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    dimensions: int
    pooling: str
    limits: _common_pb2.Limits
    batch_budget: _common_pb2.BatchBudget
    default_truncation: _common_pb2.TruncationPolicy
    tuning_curve: _containers.RepeatedCompositeFieldContainer[TuningPoint]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., dimensions: _Optional[int] = ..., pooling: _Optional[str] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., batch_budget: _Optional[_Union[_common_pb2.BatchBudget, _Mapping]] = ..., default_truncation: _Optional[_Union[_common_pb2.TruncationPolicy, str]] = ..., tuning_curve: _Optional[_Iterable[_Union[TuningPoint, _Mapping]]] = ...) -> None: ...

class TuningPoint(_message.Message):
    __slots__ = ("text_tokens", "batch_size", "batch_tokens", "batch_latency_ms", "texts_per_second")
    TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    text_tokens: int
    batch_size: int
    batch_tokens: int
    batch_latency_ms: float
    texts_per_second: float
    def __init__(self, text_tokens: _Optional[int] = ..., batch_size: _Optional[int] = ..., batch_tokens: _Optional[int] = ..., batch_latency_ms: _Optional[float] = ..., texts_per_second: _Optional[float] = ...) -> None: ...
