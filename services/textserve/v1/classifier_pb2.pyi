from textserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AggregationStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_STRATEGY_UNSPECIFIED: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_NONE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_SIMPLE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_FIRST: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_AVERAGE: _ClassVar[AggregationStrategy]
    AGGREGATION_STRATEGY_MAX: _ClassVar[AggregationStrategy]
AGGREGATION_STRATEGY_UNSPECIFIED: AggregationStrategy
AGGREGATION_STRATEGY_NONE: AggregationStrategy
AGGREGATION_STRATEGY_SIMPLE: AggregationStrategy
AGGREGATION_STRATEGY_FIRST: AggregationStrategy
AGGREGATION_STRATEGY_AVERAGE: AggregationStrategy
AGGREGATION_STRATEGY_MAX: AggregationStrategy

class LabelSpec(_message.Message):
    __slots__ = ("name", "description", "examples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    examples: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., examples: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("texts", "labels", "label_set", "temperature", "top_k", "truncation", "skip_cache", "model_version", "routing_key")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SET_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedCompositeFieldContainer[LabelSpec]
    label_set: str
    temperature: float
    top_k: int
    truncation: _common_pb2.TruncationPolicy
    skip_cache: bool
    model_version: str
    routing_key: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[_Union[LabelSpec, _Mapping]]] = ..., label_set: _Optional[str] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., truncation: _Optional[_Union[_common_pb2.TruncationPolicy, str]] = ..., skip_cache: _Optional[bool] = ..., model_version: _Optional[str] = ..., routing_key: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("scores", "top_label", "logits")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOP_LABEL_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    top_label: str
    logits: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., top_label: _Optional[str] = ..., logits: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("classifications", "model", "usage", "timing")
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    model: _common_pb2.ModelInfo
    usage: _common_pb2.Usage
    timing: _common_pb2.Timing
    def __init__(self, classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...

class ClassifierInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassifierInfoResponse(_message.Message):
    __slots__ = ("kind", "model", "labels", "label_sets", "limits", "max_labels_per_request", "default_temperature")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ClassifierInfoResponse.Kind]
        KIND_SEQUENCE_CLASSIFICATION: _ClassVar[ClassifierInfoResponse.Kind]
        KIND_ZERO_SHOT: _ClassVar[ClassifierInfoResponse.Kind]
        KIND_LINEAR_HEAD: _ClassVar[ClassifierInfoResponse.Kind]
        KIND_TOKEN_CLASSIFICATION: _ClassVar[ClassifierInfoResponse.Kind]
    KIND_UNSPECIFIED: ClassifierInfoResponse.Kind
    KIND_SEQUENCE_CLASSIFICATION: ClassifierInfoResponse.Kind
    KIND_ZERO_SHOT: ClassifierInfoResponse.Kind
    KIND_LINEAR_HEAD: ClassifierInfoResponse.Kind
    KIND_TOKEN_CLASSIFICATION: ClassifierInfoResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SETS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    MAX_LABELS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    kind: ClassifierInfoResponse.Kind
    model: _common_pb2.ModelInfo
    labels: _containers.RepeatedScalarFieldContainer[str]
    label_sets: _containers.RepeatedScalarFieldContainer[str]
    limits: _common_pb2.Limits
    max_labels_per_request: int
    default_temperature: float
    def __init__(self, kind: _Optional[_Union[ClassifierInfoResponse.Kind, str]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., label_sets: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., max_labels_per_request: _Optional[int] = ..., default_temperature: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "text_index", "label")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text_index: int
    label: str
    def __init__(self, request_id: _Optional[str] = ..., text_index: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("result",)
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[FeedbackResponse.Result]
        RESULT_JOINED: _ClassVar[FeedbackResponse.Result]
        RESULT_DUPLICATE: _ClassVar[FeedbackResponse.Result]
    RESULT_UNSPECIFIED: FeedbackResponse.Result
    RESULT_JOINED: FeedbackResponse.Result
    RESULT_DUPLICATE: FeedbackResponse.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: FeedbackResponse.Result
    def __init__(self, result: _Optional[_Union[FeedbackResponse.Result, str]] = ...) -> None: ...

class ExtractEntitiesRequest(_message.Message):
    __slots__ = ("texts", "aggregation_strategy", "stride", "include_tokens", "skip_cache")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    aggregation_strategy: AggregationStrategy
    stride: int
    include_tokens: bool
    skip_cache: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., aggregation_strategy: _Optional[_Union[AggregationStrategy, str]] = ..., stride: _Optional[int] = ..., include_tokens: _Optional[bool] = ..., skip_cache: _Optional[bool] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "start", "end", "text")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    start: int
    end: int
    text: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class TextEntities(_message.Message):
    __slots__ = ("entities", "tokens", "windows")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    tokens: _containers.RepeatedCompositeFieldContainer[Entity]
    windows: int
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., tokens: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., windows: _Optional[int] = ...) -> None: ...

class ExtractEntitiesResponse(_message.Message):
    __slots__ = ("results", "model", "usage", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextEntities]
    model: _common_pb2.ModelInfo
    usage: _common_pb2.Usage
    timing: _common_pb2.Timing
    def __init__(self, results: _Optional[_Iterable[_Union[TextEntities, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...
