from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVAL_STATUS_UNSPECIFIED: _ClassVar[EvalStatus]
    EVAL_STATUS_QUEUED: _ClassVar[EvalStatus]
    EVAL_STATUS_RUNNING: _ClassVar[EvalStatus]
    EVAL_STATUS_SUCCEEDED: _ClassVar[EvalStatus]
    EVAL_STATUS_FAILED: _ClassVar[EvalStatus]
    EVAL_STATUS_CANCELLED: _ClassVar[EvalStatus]
EVAL_STATUS_UNSPECIFIED: EvalStatus
EVAL_STATUS_QUEUED: EvalStatus
EVAL_STATUS_RUNNING: EvalStatus
EVAL_STATUS_SUCCEEDED: EvalStatus
EVAL_STATUS_FAILED: EvalStatus
EVAL_STATUS_CANCELLED: EvalStatus

class Metric(_message.Message):
    __slots__ = ("value", "stderr", "ci_low", "ci_high", "higher_is_better")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    higher_is_better: bool
    def __init__(self, value: _Optional[float] = ..., stderr: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class EvalRun(_message.Message):
    __slots__ = ("id", "model", "model_version", "suite", "status", "metrics", "sample_count", "samples_done", "duration_s", "error", "params_json", "created_at", "finished_at", "samples_json", "created_by")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metric
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metric, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    model_version: str
    suite: str
    status: EvalStatus
    metrics: _containers.MessageMap[str, Metric]
    sample_count: int
    samples_done: int
    duration_s: float
    error: str
    params_json: str
    created_at: int
    finished_at: int
    samples_json: _containers.RepeatedScalarFieldContainer[str]
    created_by: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., suite: _Optional[str] = ..., status: _Optional[_Union[EvalStatus, str]] = ..., metrics: _Optional[_Mapping[str, Metric]] = ..., sample_count: _Optional[int] = ..., samples_done: _Optional[int] = ..., duration_s: _Optional[float] = ..., error: _Optional[str] = ..., params_json: _Optional[str] = ..., created_at: _Optional[int] = ..., finished_at: _Optional[int] = ..., samples_json: _Optional[_Iterable[str]] = ..., created_by: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("model", "suite", "params_json", "created_by")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    model: str
    suite: str
    params_json: str
    created_by: str
    def __init__(self, model: _Optional[str] = ..., suite: _Optional[str] = ..., params_json: _Optional[str] = ..., created_by: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("id", "include_samples")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_samples: bool
    def __init__(self, id: _Optional[str] = ..., include_samples: _Optional[bool] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model", "suite", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    suite: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., suite: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[EvalRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[EvalRun, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSuitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSuitesResponse(_message.Message):
    __slots__ = ("suites",)
    SUITES_FIELD_NUMBER: _ClassVar[int]
    suites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, suites: _Optional[_Iterable[str]] = ...) -> None: ...

class GateCheck(_message.Message):
    __slots__ = ("suite", "metric", "candidate", "current", "threshold", "tolerance", "passed", "reason", "candidate_run_id", "current_run_id")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    suite: str
    metric: str
    candidate: float
    current: float
    threshold: float
    tolerance: float
    passed: bool
    reason: str
    candidate_run_id: str
    current_run_id: str
    def __init__(self, suite: _Optional[str] = ..., metric: _Optional[str] = ..., candidate: _Optional[float] = ..., current: _Optional[float] = ..., threshold: _Optional[float] = ..., tolerance: _Optional[float] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., candidate_run_id: _Optional[str] = ..., current_run_id: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("alias", "version", "force", "actor")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    alias: str
    version: str
    force: bool
    actor: str
    def __init__(self, alias: _Optional[str] = ..., version: _Optional[str] = ..., force: _Optional[bool] = ..., actor: _Optional[str] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("promoted", "alias", "version", "previous_version", "checks", "message", "forced")
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    promoted: bool
    alias: str
    version: str
    previous_version: str
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    message: str
    forced: bool
    def __init__(self, promoted: _Optional[bool] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ..., message: _Optional[str] = ..., forced: _Optional[bool] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("alias", "actor")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    alias: str
    actor: str
    def __init__(self, alias: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...
