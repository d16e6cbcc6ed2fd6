import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WindowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_STATE_UNSPECIFIED: _ClassVar[WindowState]
    WINDOW_STATE_OPEN: _ClassVar[WindowState]
    WINDOW_STATE_CLOSED: _ClassVar[WindowState]

class Statistic(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATISTIC_UNSPECIFIED: _ClassVar[Statistic]
    STATISTIC_SUM: _ClassVar[Statistic]
    STATISTIC_COUNT: _ClassVar[Statistic]
    STATISTIC_MEAN: _ClassVar[Statistic]
    STATISTIC_HISTOGRAM: _ClassVar[Statistic]
    STATISTIC_ADOPTION: _ClassVar[Statistic]
    STATISTIC_ACTIVE: _ClassVar[Statistic]
    STATISTIC_RATIO: _ClassVar[Statistic]
WINDOW_STATE_UNSPECIFIED: WindowState
WINDOW_STATE_OPEN: WindowState
WINDOW_STATE_CLOSED: WindowState
STATISTIC_UNSPECIFIED: Statistic
STATISTIC_SUM: Statistic
STATISTIC_COUNT: Statistic
STATISTIC_MEAN: Statistic
STATISTIC_HISTOGRAM: Statistic
STATISTIC_ADOPTION: Statistic
STATISTIC_ACTIVE: Statistic
STATISTIC_RATIO: Statistic

class Window(_message.Message):
    __slots__ = ("id", "start", "end", "state", "closes_at", "closed_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLOSES_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    state: WindowState
    closes_at: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[WindowState, str]] = ..., closes_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
