from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TruncationPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_POLICY_UNSPECIFIED: _ClassVar[TruncationPolicy]
    TRUNCATION_POLICY_TRUNCATE: _ClassVar[TruncationPolicy]
    TRUNCATION_POLICY_REJECT: _ClassVar[TruncationPolicy]
TRUNCATION_POLICY_UNSPECIFIED: TruncationPolicy
TRUNCATION_POLICY_TRUNCATE: TruncationPolicy
TRUNCATION_POLICY_REJECT: TruncationPolicy

class ModelInfo(_message.Message):
    __slots__ = ("name", "revision", "backend", "device", "max_input_tokens", "precision", "description", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: str
    backend: str
    device: str
    max_input_tokens: int
    precision: str
    description: str
    version: str
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., max_input_tokens: _Optional[int] = ..., precision: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "truncated_texts", "cached_texts")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    truncated_texts: int
    cached_texts: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., truncated_texts: _Optional[int] = ..., cached_texts: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("tokenize_time_ns", "queue_time_ns", "inference_time_ns", "total_time_ns")
    TOKENIZE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    tokenize_time_ns: int
    queue_time_ns: int
    inference_time_ns: int
    total_time_ns: int
    def __init__(self, tokenize_time_ns: _Optional[int] = ..., queue_time_ns: _Optional[int] = ..., inference_time_ns: _Optional[int] = ..., total_time_ns: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_texts_per_request", "max_text_chars", "max_tokens_per_text", "max_request_bytes")
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_texts_per_request: int
    max_text_chars: int
    max_tokens_per_text: int
    max_request_bytes: int
    def __init__(self, max_texts_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_tokens_per_text: _Optional[int] = ..., max_request_bytes: _Optional[int] = ...) -> None: ...

class BatchBudget(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_tokens", "max_queue_delay_ms", "max_queue_size", "source")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_ms: int
    max_queue_size: int
    source: str
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_queue_delay_ms: _Optional[int] = ..., max_queue_size: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("field", "limit", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    limit: str
    description: str
    def __init__(self, field: _Optional[str] = ..., limit: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...
