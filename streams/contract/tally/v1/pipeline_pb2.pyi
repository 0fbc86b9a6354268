from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetter(_message.Message):
    __slots__ = ("reason", "detail", "source_topic", "source_partition", "source_offset", "received_epoch_ms", "scrubbed_payload", "payload_size", "payload_sha256", "event_id", "app", "user", "scrubbed_fields", "user_partition")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    SCRUBBED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SCRUBBED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    USER_PARTITION_FIELD_NUMBER: _ClassVar[int]
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    received_epoch_ms: int
    scrubbed_payload: bytes
    payload_size: int
    payload_sha256: str
    event_id: str
    app: str
    user: str
    scrubbed_fields: _containers.RepeatedScalarFieldContainer[str]
    user_partition: int
    def __init__(self, reason: _Optional[str] = ..., detail: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., received_epoch_ms: _Optional[int] = ..., scrubbed_payload: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., payload_sha256: _Optional[str] = ..., event_id: _Optional[str] = ..., app: _Optional[str] = ..., user: _Optional[str] = ..., scrubbed_fields: _Optional[_Iterable[str]] = ..., user_partition: _Optional[int] = ...) -> None: ...

class MetricUpdate(_message.Message):
    __slots__ = ("metric", "app", "day", "value", "version", "updated_epoch_ms", "correction")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    metric: str
    app: str
    day: str
    value: int
    version: int
    updated_epoch_ms: int
    correction: bool
    def __init__(self, metric: _Optional[str] = ..., app: _Optional[str] = ..., day: _Optional[str] = ..., value: _Optional[int] = ..., version: _Optional[int] = ..., updated_epoch_ms: _Optional[int] = ..., correction: _Optional[bool] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("rule", "state", "app", "value", "threshold", "message", "at_epoch_ms")
    RULE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    rule: str
    state: str
    app: str
    value: float
    threshold: float
    message: str
    at_epoch_ms: int
    def __init__(self, rule: _Optional[str] = ..., state: _Optional[str] = ..., app: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., message: _Optional[str] = ..., at_epoch_ms: _Optional[int] = ...) -> None: ...
