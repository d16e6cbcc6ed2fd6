import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_USER: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_METRIC: _ClassVar[RejectReason]
    REJECT_REASON_NEGATIVE_VALUE: _ClassVar[RejectReason]
    REJECT_REASON_LATE: _ClassVar[RejectReason]
    REJECT_REASON_FUTURE: _ClassVar[RejectReason]
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_UNKNOWN_USER: RejectReason
REJECT_REASON_UNKNOWN_METRIC: RejectReason
REJECT_REASON_NEGATIVE_VALUE: RejectReason
REJECT_REASON_LATE: RejectReason
REJECT_REASON_FUTURE: RejectReason

class Contribution(_message.Message):
    __slots__ = ("user", "metric", "value", "event_time")
    USER_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    user: str
    metric: str
    value: int
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, user: _Optional[str] = ..., metric: _Optional[str] = ..., value: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("batch_id", "source", "source_version", "dropped", "contributions")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    source: str
    source_version: str
    dropped: int
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    def __init__(self, batch_id: _Optional[str] = ..., source: _Optional[str] = ..., source_version: _Optional[str] = ..., dropped: _Optional[int] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "reason", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: RejectReason
    message: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicate: bool
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, accepted: _Optional[int] = ..., duplicate: _Optional[bool] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...
