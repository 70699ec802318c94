from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_READY: _ClassVar[VersionState]
    VERSION_STATE_LOADING: _ClassVar[VersionState]
    VERSION_STATE_UNLOADING: _ClassVar[VersionState]
    VERSION_STATE_UNAVAILABLE: _ClassVar[VersionState]
    VERSION_STATE_FAILED: _ClassVar[VersionState]
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_READY: VersionState
VERSION_STATE_LOADING: VersionState
VERSION_STATE_UNLOADING: VersionState
VERSION_STATE_UNAVAILABLE: VersionState
VERSION_STATE_FAILED: VersionState

class ModelVersion(_message.Message):
    __slots__ = ("version", "state", "reason", "weight", "shadow", "in_flight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: VersionState
    reason: str
    weight: float
    shadow: bool
    in_flight: int
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[VersionState, str]] = ..., reason: _Optional[str] = ..., weight: _Optional[float] = ..., shadow: _Optional[bool] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("service", "model", "versions", "weights", "shadow_version", "shadow_share")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    service: str
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    weights: _containers.ScalarMap[str, float]
    shadow_version: str
    shadow_share: float
    def __init__(self, service: _Optional[str] = ..., model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., weights: _Optional[_Mapping[str, float]] = ..., shadow_version: _Optional[str] = ..., shadow_share: _Optional[float] = ...) -> None: ...

class LoadVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class LoadVersionResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class UnloadVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class UnloadVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class SetRoutingRequest(_message.Message):
    __slots__ = ("weights", "shadow_version", "shadow_share")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.ScalarMap[str, float]
    shadow_version: str
    shadow_share: float
    def __init__(self, weights: _Optional[_Mapping[str, float]] = ..., shadow_version: _Optional[str] = ..., shadow_share: _Optional[float] = ...) -> None: ...

class SetRoutingResponse(_message.Message):
    __slots__ = ("routing",)
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    routing: ListVersionsResponse
    def __init__(self, routing: _Optional[_Union[ListVersionsResponse, _Mapping]] = ...) -> None: ...
