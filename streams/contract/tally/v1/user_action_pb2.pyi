from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserAction(_message.Message):
    __slots__ = ("host_name", "start_epoch_ms", "end_epoch_ms", "pos_args_json", "keyword_args_json", "output", "error", "user", "command", "event_id", "app", "schema_version", "session_id", "target_id", "target_type", "label", "location", "value", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    START_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    END_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    POS_ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    host_name: str
    start_epoch_ms: int
    end_epoch_ms: int
    pos_args_json: str
    keyword_args_json: str
    output: str
    error: str
    user: str
    command: str
    event_id: str
    app: str
    schema_version: int
    session_id: str
    target_id: str
    target_type: str
    label: str
    location: str
    value: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, host_name: _Optional[str] = ..., start_epoch_ms: _Optional[int] = ..., end_epoch_ms: _Optional[int] = ..., pos_args_json: _Optional[str] = ..., keyword_args_json: _Optional[str] = ..., output: _Optional[str] = ..., error: _Optional[str] = ..., user: _Optional[str] = ..., command: _Optional[str] = ..., event_id: _Optional[str] = ..., app: _Optional[str] = ..., schema_version: _Optional[int] = ..., session_id: _Optional[str] = ..., target_id: _Optional[str] = ..., target_type: _Optional[str] = ..., label: _Optional[str] = ..., location: _Optional[str] = ..., value: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user", "email", "title", "team", "ab_flags", "updated_epoch_ms")
    class AbFlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    AB_FLAGS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    user: str
    email: str
    title: str
    team: str
    ab_flags: _containers.ScalarMap[str, str]
    updated_epoch_ms: int
    def __init__(self, user: _Optional[str] = ..., email: _Optional[str] = ..., title: _Optional[str] = ..., team: _Optional[str] = ..., ab_flags: _Optional[_Mapping[str, str]] = ..., updated_epoch_ms: _Optional[int] = ...) -> None: ...

class UserActionBatch(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[UserAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[UserAction, _Mapping]]] = ...) -> None: ...
