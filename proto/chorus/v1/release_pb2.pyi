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

class NodeLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_LEVEL_UNSPECIFIED: _ClassVar[NodeLevel]
    NODE_LEVEL_TEAM: _ClassVar[NodeLevel]
    NODE_LEVEL_ORG: _ClassVar[NodeLevel]
    NODE_LEVEL_COMPANY: _ClassVar[NodeLevel]

class TeamOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEAM_OUTCOME_UNSPECIFIED: _ClassVar[TeamOutcome]
    TEAM_OUTCOME_RELEASED: _ClassVar[TeamOutcome]
    TEAM_OUTCOME_SUPPRESSED: _ClassVar[TeamOutcome]
NODE_LEVEL_UNSPECIFIED: NodeLevel
NODE_LEVEL_TEAM: NodeLevel
NODE_LEVEL_ORG: NodeLevel
NODE_LEVEL_COMPANY: NodeLevel
TEAM_OUTCOME_UNSPECIFIED: TeamOutcome
TEAM_OUTCOME_RELEASED: TeamOutcome
TEAM_OUTCOME_SUPPRESSED: TeamOutcome

class ListWindowsRequest(_message.Message):
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

class ListWindowsResponse(_message.Message):
    __slots__ = ("windows", "next_page_token")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[_common_pb2.Window]
    next_page_token: str
    def __init__(self, windows: _Optional[_Iterable[_Union[_common_pb2.Window, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "description", "max_per_user", "histogram_edges")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_USER_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_EDGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    max_per_user: int
    histogram_edges: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., max_per_user: _Optional[int] = ..., histogram_edges: _Optional[_Iterable[int]] = ...) -> None: ...

class ListMetricsRequest(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: str
    def __init__(self, window: _Optional[str] = ...) -> None: ...

class ListMetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class Team(_message.Message):
    __slots__ = ("name", "roster_size", "eligible", "reason", "org")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    name: str
    roster_size: int
    eligible: bool
    reason: str
    org: str
    def __init__(self, name: _Optional[str] = ..., roster_size: _Optional[int] = ..., eligible: _Optional[bool] = ..., reason: _Optional[str] = ..., org: _Optional[str] = ...) -> None: ...

class ListTeamsRequest(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: str
    def __init__(self, window: _Optional[str] = ...) -> None: ...

class ListTeamsResponse(_message.Message):
    __slots__ = ("teams", "min_team_size")
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    MIN_TEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    teams: _containers.RepeatedCompositeFieldContainer[Team]
    min_team_size: int
    def __init__(self, teams: _Optional[_Iterable[_Union[Team, _Mapping]]] = ..., min_team_size: _Optional[int] = ...) -> None: ...

class StatisticRequest(_message.Message):
    __slots__ = ("statistic", "epsilon", "denominator")
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    statistic: _common_pb2.Statistic
    epsilon: str
    denominator: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, statistic: _Optional[_Union[_common_pb2.Statistic, str]] = ..., epsilon: _Optional[str] = ..., denominator: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("window", "teams", "metrics", "statistics", "validate_only", "nodes")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    window: str
    teams: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    statistics: _containers.RepeatedCompositeFieldContainer[StatisticRequest]
    validate_only: bool
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, window: _Optional[str] = ..., teams: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[str]] = ..., statistics: _Optional[_Iterable[_Union[StatisticRequest, _Mapping]]] = ..., validate_only: _Optional[bool] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class UnreleasedStatistic(_message.Message):
    __slots__ = ("metric", "statistic", "epsilon", "expected_ci95")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CI95_FIELD_NUMBER: _ClassVar[int]
    metric: str
    statistic: _common_pb2.Statistic
    epsilon: str
    expected_ci95: float
    def __init__(self, metric: _Optional[str] = ..., statistic: _Optional[_Union[_common_pb2.Statistic, str]] = ..., epsilon: _Optional[str] = ..., expected_ci95: _Optional[float] = ...) -> None: ...

class ConsistentEstimate(_message.Message):
    __slots__ = ("value", "ci95")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CI95_FIELD_NUMBER: _ClassVar[int]
    value: float
    ci95: float
    def __init__(self, value: _Optional[float] = ..., ci95: _Optional[float] = ...) -> None: ...

class Remainder(_message.Message):
    __slots__ = ("parent", "children", "roster_size", "metric", "statistic", "estimate")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    ROSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    children: _containers.RepeatedScalarFieldContainer[str]
    roster_size: int
    metric: str
    statistic: _common_pb2.Statistic
    estimate: ConsistentEstimate
    def __init__(self, parent: _Optional[str] = ..., children: _Optional[_Iterable[str]] = ..., roster_size: _Optional[int] = ..., metric: _Optional[str] = ..., statistic: _Optional[_Union[_common_pb2.Statistic, str]] = ..., estimate: _Optional[_Union[ConsistentEstimate, _Mapping]] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("metric", "statistic", "value", "ci95", "bucket_counts", "histogram_edges", "epsilon_charged", "epsilon", "mechanism", "sensitivity", "scale", "cached", "release_id", "note", "derived_from", "consistent", "noisy_value", "denominator", "noisy_bucket_counts")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CI95_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_EDGES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CHARGED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DERIVED_FROM_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    NOISY_VALUE_FIELD_NUMBER: _ClassVar[int]
    DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    NOISY_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    statistic: _common_pb2.Statistic
    value: float
    ci95: float
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    histogram_edges: _containers.RepeatedScalarFieldContainer[int]
    epsilon_charged: str
    epsilon: str
    mechanism: str
    sensitivity: int
    scale: float
    cached: bool
    release_id: str
    note: str
    derived_from: _containers.RepeatedScalarFieldContainer[str]
    consistent: ConsistentEstimate
    noisy_value: float
    denominator: _containers.RepeatedScalarFieldContainer[str]
    noisy_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, metric: _Optional[str] = ..., statistic: _Optional[_Union[_common_pb2.Statistic, str]] = ..., value: _Optional[float] = ..., ci95: _Optional[float] = ..., bucket_counts: _Optional[_Iterable[int]] = ..., histogram_edges: _Optional[_Iterable[int]] = ..., epsilon_charged: _Optional[str] = ..., epsilon: _Optional[str] = ..., mechanism: _Optional[str] = ..., sensitivity: _Optional[int] = ..., scale: _Optional[float] = ..., cached: _Optional[bool] = ..., release_id: _Optional[str] = ..., note: _Optional[str] = ..., derived_from: _Optional[_Iterable[str]] = ..., consistent: _Optional[_Union[ConsistentEstimate, _Mapping]] = ..., noisy_value: _Optional[float] = ..., denominator: _Optional[_Iterable[str]] = ..., noisy_bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class TeamRelease(_message.Message):
    __slots__ = ("team", "outcome", "message", "estimates", "budget_cap", "budget_remaining", "roster_size", "epsilon_charged", "unreleased", "epsilon_required", "level", "teams_charged", "unit", "imprecise", "counted_in")
    TEAM_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CAP_FIELD_NUMBER: _ClassVar[int]
    BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    ROSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CHARGED_FIELD_NUMBER: _ClassVar[int]
    UNRELEASED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEAMS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    IMPRECISE_FIELD_NUMBER: _ClassVar[int]
    COUNTED_IN_FIELD_NUMBER: _ClassVar[int]
    team: str
    outcome: TeamOutcome
    message: str
    estimates: _containers.RepeatedCompositeFieldContainer[Estimate]
    budget_cap: str
    budget_remaining: str
    roster_size: int
    epsilon_charged: str
    unreleased: _containers.RepeatedCompositeFieldContainer[UnreleasedStatistic]
    epsilon_required: str
    level: NodeLevel
    teams_charged: _containers.RepeatedScalarFieldContainer[str]
    unit: str
    imprecise: bool
    counted_in: str
    def __init__(self, team: _Optional[str] = ..., outcome: _Optional[_Union[TeamOutcome, str]] = ..., message: _Optional[str] = ..., estimates: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ..., budget_cap: _Optional[str] = ..., budget_remaining: _Optional[str] = ..., roster_size: _Optional[int] = ..., epsilon_charged: _Optional[str] = ..., unreleased: _Optional[_Iterable[_Union[UnreleasedStatistic, _Mapping]]] = ..., epsilon_required: _Optional[str] = ..., level: _Optional[_Union[NodeLevel, str]] = ..., teams_charged: _Optional[_Iterable[str]] = ..., unit: _Optional[str] = ..., imprecise: _Optional[bool] = ..., counted_in: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("window", "teams", "remainders")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    REMAINDERS_FIELD_NUMBER: _ClassVar[int]
    window: str
    teams: _containers.RepeatedCompositeFieldContainer[TeamRelease]
    remainders: _containers.RepeatedCompositeFieldContainer[Remainder]
    def __init__(self, window: _Optional[str] = ..., teams: _Optional[_Iterable[_Union[TeamRelease, _Mapping]]] = ..., remainders: _Optional[_Iterable[_Union[Remainder, _Mapping]]] = ...) -> None: ...
