from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoredResponse(_message.Message):
    __slots__ = ("id", "model", "previous_response_id", "response_json", "input_items_json", "context_json", "created_at", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_ITEMS_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    previous_response_id: str
    response_json: str
    input_items_json: str
    context_json: str
    created_at: int
    owner: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., previous_response_id: _Optional[str] = ..., response_json: _Optional[str] = ..., input_items_json: _Optional[str] = ..., context_json: _Optional[str] = ..., created_at: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class PutResponseRequest(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: StoredResponse
    def __init__(self, response: _Optional[_Union[StoredResponse, _Mapping]] = ...) -> None: ...

class PutResponseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetResponseRequest(_message.Message):
    __slots__ = ("id", "with_input_items", "with_context")
    ID_FIELD_NUMBER: _ClassVar[int]
    WITH_INPUT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    WITH_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    with_input_items: bool
    with_context: bool
    def __init__(self, id: _Optional[str] = ..., with_input_items: _Optional[bool] = ..., with_context: _Optional[bool] = ...) -> None: ...

class DeleteResponseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteResponseReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
