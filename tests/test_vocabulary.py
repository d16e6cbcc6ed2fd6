"""One vocabulary (docs/architecture.md): statistic names, roles, compact numbers and the batch
limits the SDK and the server share are each defined once, with their wire values."""

from __future__ import annotations

import tomllib

import pytest

from chorus.client import limits
from chorus.server.front.numbers import format_compact
from chorus.server.model import config, roles, statistics
from chorus.v1 import admin_pb2, common_pb2


def test_every_wire_statistic_has_one_name_and_back() -> None:
    wire = [v for v in common_pb2.Statistic.values() if v != common_pb2.STATISTIC_UNSPECIFIED]
    names = [statistics.name_of(v) for v in wire]
    assert sorted(names) == sorted([*statistics.REQUESTABLE, statistics.ACTIVE])
    assert all(statistics.to_proto(n) == v for n, v in zip(names, wire, strict=True))
    assert statistics.requestable_of(common_pb2.STATISTIC_ACTIVE) is None  # answered, never requested
    assert set(statistics.NOISY) == {"sum", "count", "histogram", "active"}
    assert set(config.load(None).policy.default_charge) == set(statistics.NOISY)


def test_every_wire_role_maps_to_one_role_and_back() -> None:
    wire = [v for v in admin_pb2.Role.values() if v != admin_pb2.ROLE_UNSPECIFIED]
    assert sorted(roles.ROLE_TO_PROTO.values()) == sorted(wire)
    assert all(roles.role_from_proto(roles.ROLE_TO_PROTO[r]) is r for r in roles.Role)
    assert roles.role_from_proto(admin_pb2.ROLE_UNSPECIFIED) is None


def test_compact_numbers_are_spelled_one_way() -> None:
    assert [format_compact(v) for v in (950, 1866.5, 2.5e6, 3.1e9, 4e12)] == ["950", "1.87K", "2.5M", "3.1B", "4T"]
    assert format_compact(999_950, fixed=True) == "1.00M"  # rounding first, never "1000K"


def test_the_server_takes_the_sdk_batch_limits_as_its_floors() -> None:
    assert config.Limits().max_string_length == limits.MAX_NAME_CHARS
    metric = '[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'
    below = f"{metric}[limits]\nmax_batch_contributions = {limits.MAX_BATCH_CONTRIBUTIONS - 1}\n"
    with pytest.raises(config.ConfigError, match=str(limits.MAX_BATCH_CONTRIBUTIONS)):
        config.parse(tomllib.loads(below))
    shorter = f"{metric}[limits]\nmax_string_length = {limits.MAX_NAME_CHARS - 1}\n"
    with pytest.raises(config.ConfigError, match=str(limits.MAX_NAME_CHARS)):
        config.parse(tomllib.loads(shorter))
