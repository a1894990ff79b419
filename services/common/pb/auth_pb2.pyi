from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOWED: _ClassVar[Decision]
    DECISION_UNAUTHENTICATED: _ClassVar[Decision]
    DECISION_FORBIDDEN: _ClassVar[Decision]
    DECISION_RATE_LIMITED: _ClassVar[Decision]
    DECISION_UNAVAILABLE: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOWED: Decision
DECISION_UNAUTHENTICATED: Decision
DECISION_FORBIDDEN: Decision
DECISION_RATE_LIMITED: Decision
DECISION_UNAVAILABLE: Decision

class RateLimitState(_message.Message):
    __slots__ = ("limit_requests", "remaining_requests", "reset_requests_s", "limit_tokens", "remaining_tokens", "reset_tokens_s")
    LIMIT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RESET_REQUESTS_S_FIELD_NUMBER: _ClassVar[int]
    LIMIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESET_TOKENS_S_FIELD_NUMBER: _ClassVar[int]
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    def __init__(self, limit_requests: _Optional[int] = ..., remaining_requests: _Optional[int] = ..., reset_requests_s: _Optional[float] = ..., limit_tokens: _Optional[int] = ..., remaining_tokens: _Optional[int] = ..., reset_tokens_s: _Optional[float] = ...) -> None: ...

class AdmitRequest(_message.Message):
    __slots__ = ("api_key", "request_id", "model", "scope", "reserve_tokens", "as_identity")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RESERVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AS_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    request_id: str
    model: str
    scope: str
    reserve_tokens: int
    as_identity: bool
    def __init__(self, api_key: _Optional[str] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., scope: _Optional[str] = ..., reserve_tokens: _Optional[int] = ..., as_identity: _Optional[bool] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("decision", "code", "message", "rate_limit", "retry_after_s", "key_id", "reservation_id", "scopes", "owner", "allowed_models")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    code: str
    message: str
    rate_limit: RateLimitState
    retry_after_s: float
    key_id: str
    reservation_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., rate_limit: _Optional[_Union[RateLimitState, _Mapping]] = ..., retry_after_s: _Optional[float] = ..., key_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportUsageRequest(_message.Message):
    __slots__ = ("reservation_id", "request_id", "key_id", "model", "prompt_tokens", "completion_tokens", "status", "latency_s")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    request_id: str
    key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    latency_s: float
    def __init__(self, reservation_id: _Optional[str] = ..., request_id: _Optional[str] = ..., key_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., status: _Optional[str] = ..., latency_s: _Optional[float] = ...) -> None: ...

class ReportUsageResponse(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    def __init__(self, outcome: _Optional[str] = ...) -> None: ...

class ReportUsageBatchRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[ReportUsageRequest]
    def __init__(self, reports: _Optional[_Iterable[_Union[ReportUsageRequest, _Mapping]]] = ...) -> None: ...

class ReportUsageBatchResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, outcomes: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("id", "prefix", "name", "owner", "scopes", "allowed_models", "rpm", "tpm", "daily_token_quota", "max_concurrent", "expires_at", "revoked_at", "created_at", "last_used_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    DAILY_TOKEN_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    prefix: str
    name: str
    owner: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    rpm: int
    tpm: int
    daily_token_quota: int
    max_concurrent: int
    expires_at: str
    revoked_at: str
    created_at: str
    last_used_at: str
    def __init__(self, id: _Optional[str] = ..., prefix: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., daily_token_quota: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., expires_at: _Optional[str] = ..., revoked_at: _Optional[str] = ..., created_at: _Optional[str] = ..., last_used_at: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "owner", "scopes", "allowed_models", "rpm", "tpm", "daily_token_quota", "max_concurrent", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    DAILY_TOKEN_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    rpm: int
    tpm: int
    daily_token_quota: int
    max_concurrent: int
    expires_at: str
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., daily_token_quota: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., expires_at: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    secret: str
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("owner", "include_revoked")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    owner: str
    include_revoked: bool
    def __init__(self, owner: _Optional[str] = ..., include_revoked: _Optional[bool] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class KeyRef(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyUsageRequest(_message.Message):
    __slots__ = ("key_id", "days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    days: int
    def __init__(self, key_id: _Optional[str] = ..., days: _Optional[int] = ...) -> None: ...

class UsageBucket(_message.Message):
    __slots__ = ("day", "model", "requests", "prompt_tokens", "completion_tokens")
    DAY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, day: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GetKeyUsageResponse(_message.Message):
    __slots__ = ("key_id", "buckets", "requests", "prompt_tokens", "completion_tokens")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    buckets: _containers.RepeatedCompositeFieldContainer[UsageBucket]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, key_id: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[UsageBucket, _Mapping]]] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...
