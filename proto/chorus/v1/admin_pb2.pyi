import datetime

from chorus.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_INGEST: _ClassVar[Role]
    ROLE_ANALYST: _ClassVar[Role]
    ROLE_AUDITOR: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_INGEST: Role
ROLE_ANALYST: Role
ROLE_AUDITOR: Role
ROLE_ADMIN: Role

class RosterEntry(_message.Message):
    __slots__ = ("user", "team", "org")
    USER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    user: str
    team: str
    org: str
    def __init__(self, user: _Optional[str] = ..., team: _Optional[str] = ..., org: _Optional[str] = ...) -> None: ...

class ImportRosterRequest(_message.Message):
    __slots__ = ("entries", "dry_run")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RosterEntry]
    dry_run: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[RosterEntry, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class TeamSize(_message.Message):
    __slots__ = ("team", "size", "org")
    TEAM_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    team: str
    size: int
    org: str
    def __init__(self, team: _Optional[str] = ..., size: _Optional[int] = ..., org: _Optional[str] = ...) -> None: ...

class ImportRosterResponse(_message.Message):
    __slots__ = ("people", "teams", "roster_hash", "min_team_size", "previous_teams", "people_added", "people_removed", "dry_run")
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    ROSTER_HASH_FIELD_NUMBER: _ClassVar[int]
    MIN_TEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TEAMS_FIELD_NUMBER: _ClassVar[int]
    PEOPLE_ADDED_FIELD_NUMBER: _ClassVar[int]
    PEOPLE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    people: int
    teams: _containers.RepeatedCompositeFieldContainer[TeamSize]
    roster_hash: str
    min_team_size: int
    previous_teams: _containers.RepeatedCompositeFieldContainer[TeamSize]
    people_added: int
    people_removed: int
    dry_run: bool
    def __init__(self, people: _Optional[int] = ..., teams: _Optional[_Iterable[_Union[TeamSize, _Mapping]]] = ..., roster_hash: _Optional[str] = ..., min_team_size: _Optional[int] = ..., previous_teams: _Optional[_Iterable[_Union[TeamSize, _Mapping]]] = ..., people_added: _Optional[int] = ..., people_removed: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("role", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: Role
    name: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., name: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: TokenInfo
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "role", "create_time", "revoke_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens", "next_page_token")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    next_page_token: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: TokenInfo
    def __init__(self, info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class AdminServiceListWindowsRequest(_message.Message):
    __slots__ = ("start", "end", "page_size", "page_token")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AdminServiceListWindowsResponse(_message.Message):
    __slots__ = ("windows", "next_page_token")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[_common_pb2.Window]
    next_page_token: str
    def __init__(self, windows: _Optional[_Iterable[_Union[_common_pb2.Window, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CloseWindowRequest(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: str
    def __init__(self, window: _Optional[str] = ...) -> None: ...

class CloseWindowResponse(_message.Message):
    __slots__ = ("window", "already_closed")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CLOSED_FIELD_NUMBER: _ClassVar[int]
    window: _common_pb2.Window
    already_closed: bool
    def __init__(self, window: _Optional[_Union[_common_pb2.Window, _Mapping]] = ..., already_closed: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("batches", "duplicate_batches", "contributions_accepted", "rejected", "contributions_clamped", "client_dropped", "invalid_batches", "pending_shreds", "otlp_points")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OtlpPointsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_CLAMPED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_DROPPED_FIELD_NUMBER: _ClassVar[int]
    INVALID_BATCHES_FIELD_NUMBER: _ClassVar[int]
    PENDING_SHREDS_FIELD_NUMBER: _ClassVar[int]
    OTLP_POINTS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    duplicate_batches: int
    contributions_accepted: int
    rejected: _containers.ScalarMap[str, int]
    contributions_clamped: int
    client_dropped: int
    invalid_batches: int
    pending_shreds: _containers.RepeatedCompositeFieldContainer[PendingShred]
    otlp_points: _containers.ScalarMap[str, int]
    def __init__(self, batches: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., contributions_accepted: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ..., contributions_clamped: _Optional[int] = ..., client_dropped: _Optional[int] = ..., invalid_batches: _Optional[int] = ..., pending_shreds: _Optional[_Iterable[_Union[PendingShred, _Mapping]]] = ..., otlp_points: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PendingShred(_message.Message):
    __slots__ = ("subject", "since", "pending_seconds")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    since: _timestamp_pb2.Timestamp
    pending_seconds: int
    def __init__(self, subject: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pending_seconds: _Optional[int] = ...) -> None: ...
