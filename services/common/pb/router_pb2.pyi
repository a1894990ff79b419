from . import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerStatus(_message.Message):
    __slots__ = ("address", "healthy", "load", "in_flight")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    address: str
    healthy: bool
    load: _inference_pb2.Load
    in_flight: int
    def __init__(self, address: _Optional[str] = ..., healthy: _Optional[bool] = ..., load: _Optional[_Union[_inference_pb2.Load, _Mapping]] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class EnsureServedRequest(_message.Message):
    __slots__ = ("model", "wait_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    wait_s: float
    def __init__(self, model: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class EnsureServedResponse(_message.Message):
    __slots__ = ("served_as", "ready", "started")
    SERVED_AS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    served_as: str
    ready: bool
    started: bool
    def __init__(self, served_as: _Optional[str] = ..., ready: _Optional[bool] = ..., started: _Optional[bool] = ...) -> None: ...

class ReleaseVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ReleaseVersionResponse(_message.Message):
    __slots__ = ("stopped", "reason")
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stopped: bool
    reason: str
    def __init__(self, stopped: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
