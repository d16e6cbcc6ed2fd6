"""Hostile input against a running server: random, truncated and oversized bytes to every RPC,
and ReportRequests with hostile strings, values and timestamps.

For every request: the answer is a defined status (never UNKNOWN or INTERNAL, which mean an
unhandled exception), the server keeps answering health checks, a rejected request leaves
every store table exactly as it was, and no answer echoes a user id back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.server.model.roles import SERVICE_ROLES, Role
from chorus.v1 import ingest_pb2

from .conftest import FUZZ, NOON, ROSTER, Answer, SecureServer, bearer, call_raw, proto_methods

pytestmark = pytest.mark.slow  # many generated inputs

BY_NAME = {m.full_name: m for m in proto_methods()}
REPORT = BY_NAME["chorus.v1.IngestService.Report"]
#: Codes that only an unhandled exception or a dead server produce.
UNDEFINED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.DATA_LOSS}
MAX_MESSAGE = 64 * 1024  # shared_server's limit
USERS = [user for user, _ in ROSTER]


def role_for(method: descriptor.MethodDescriptor) -> Role:
    return next(iter(SERVICE_ROLES[method.containing_service.full_name]))


class Checker:
    """Sends one request and checks the invariants; keeps the digest of the last accepted state."""

    def __init__(self, server: SecureServer) -> None:
        self.server = server
        self.baseline = server.digest()

    def send(self, method: descriptor.MethodDescriptor, payload: bytes,
             metadata: tuple[tuple[str, str], ...] | None, secrets: tuple[str, ...] = ()) -> Answer:
        assert self.server.channel is not None
        answer = call_raw(self.server.channel, method, payload, metadata)
        assert answer.code not in UNDEFINED, (method.full_name, answer)
        if answer.code == grpc.StatusCode.OK:
            self.baseline = self.server.digest()
        else:
            assert self.server.digest() == self.baseline, (method.full_name, answer.code, answer.details)
        for secret in secrets:
            assert secret not in answer.details
            assert all(secret.encode() not in p for p in answer.payloads), method.full_name
        assert self.server.healthy()
        return answer


@given(data=st.data())
@settings(FUZZ, max_examples=700)
def test_random_bytes_to_every_rpc(shared_server: SecureServer, data: st.DataObject) -> None:
    checker = Checker(shared_server)
    method = BY_NAME[data.draw(st.sampled_from(sorted(BY_NAME)), label="method")]
    payload = data.draw(st.binary(max_size=512), label="payload")
    checker.send(method, payload, shared_server.metadata(role_for(method)))


@given(data=st.data())
@settings(FUZZ, max_examples=300)
def test_anonymous_garbage_is_unauthenticated(shared_server: SecureServer, data: st.DataObject) -> None:
    checker = Checker(shared_server)
    method = BY_NAME[data.draw(st.sampled_from(sorted(BY_NAME)), label="method")]
    payload = data.draw(st.binary(max_size=256), label="payload")
    token = data.draw(st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                                                   max_size=120)), label="token")
    answer = checker.send(method, payload, bearer(token) if token is not None else None)
    assert answer.code == grpc.StatusCode.UNAUTHENTICATED


@given(data=st.data())
@settings(FUZZ, max_examples=25)
def test_oversized_messages(shared_server: SecureServer, data: st.DataObject) -> None:
    checker = Checker(shared_server)
    method = BY_NAME[data.draw(st.sampled_from(sorted(BY_NAME)), label="method")]
    size = data.draw(st.integers(MAX_MESSAGE + 1, 4 * MAX_MESSAGE), label="size")
    answer = checker.send(method, bytes(size), shared_server.metadata(role_for(method)))
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED


hostile_text = st.one_of(
    st.text(max_size=80),
    st.text(st.characters(codec="utf-8"), min_size=60, max_size=90),  # around the limit of 64
    st.sampled_from(["", " ", "\x00", "\u202e", "ai.tokens\x00", "'; DROP TABLE usage; --", "%s%n",
                     "../../etc/passwd", "\ufeff", "ai.tokens " * 8]),
)
users = st.one_of(st.sampled_from(USERS), st.builds(lambda s: "user-x" + s, hostile_text))
timestamps = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(int((NOON - timedelta(days=30)).timestamp()), int((NOON + timedelta(days=30)).timestamp())),
    st.just(int(NOON.timestamp())),
)
contributions = st.tuples(users, st.one_of(st.sampled_from(["ai.tokens", "ai.requests"]), hostile_text),
                          st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 300_000)), timestamps,
                          st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)))
reports = st.builds(
    lambda batch_id, source, version, dropped, items: (batch_id, source, version, dropped, items),
    st.one_of(st.uuids().map(str), hostile_text), hostile_text, hostile_text,
    st.integers(0, 2**64 - 1), st.lists(contributions, max_size=60))


def build(report: tuple) -> ingest_pb2.ReportRequest:  # type: ignore[type-arg]
    batch_id, source, version, dropped, items = report
    request = ingest_pb2.ReportRequest(batch_id=batch_id, source=source, source_version=version,
                                       dropped=dropped)
    for user, metric, value, seconds, nanos in items:
        c = request.contributions.add(user=user, metric=metric, value=value)
        c.event_time.seconds, c.event_time.nanos = seconds, nanos
    return request


@given(report=reports)
@settings(FUZZ, max_examples=700)
def test_hostile_report_requests(shared_server: SecureServer, report: tuple) -> None:  # type: ignore[type-arg]
    checker = Checker(shared_server)
    request = build(report)
    submitted = tuple({c.user for c in request.contributions if c.user.startswith("user-")})
    answer = checker.send(REPORT, request.SerializeToString(), shared_server.metadata(Role.INGEST), submitted)
    if answer.code == grpc.StatusCode.OK:
        response = ingest_pb2.ReportResponse.FromString(answer.payloads[0])
        if not response.duplicate:
            assert response.accepted + len(response.rejections) == len(request.contributions)
            assert all(0 <= r.index < len(request.contributions) for r in response.rejections)
    else:
        # ALREADY_EXISTS: the generator reuses a batch id (uuids repeat across examples) with
        # other contents, which is refused (BATCH_ID_REUSED) and stores nothing.
        assert answer.code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               grpc.StatusCode.ALREADY_EXISTS}, answer


_F = descriptor.FieldDescriptor
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), st.integers(-(2**63), 2**63 - 1)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), st.integers(0, 2**64 - 1)),
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32, _F.TYPE_ENUM),
                    st.integers(-(2**31), 2**31 - 1)),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), st.integers(0, 2**32 - 1)),
    _F.TYPE_BOOL: st.booleans(),
    _F.TYPE_DOUBLE: st.floats(),
    _F.TYPE_FLOAT: st.floats(width=32),
    _F.TYPE_STRING: hostile_text,
    _F.TYPE_BYTES: st.binary(max_size=64),
}


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[message.Message]:
    """Any message of type `desc`: every field optional, hostile scalars, nesting up to depth 3."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == _F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if field.message_type.GetOptions().map_entry:
                key, value = (field.message_type.fields_by_name[n].type for n in ("key", "value"))
                fields[field.name] = st.dictionaries(_SCALARS[key], _SCALARS[value], max_size=3)
                continue
            values = messages(field.message_type, depth + 1)
        else:
            values = _SCALARS[field.type]
        fields[field.name] = st.lists(values, max_size=3) if field.is_repeated else values
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: desc._concrete_class(**kw))


@given(data=st.data())
@settings(FUZZ, max_examples=500)
def test_random_messages_to_every_rpc(shared_server: SecureServer, data: st.DataObject) -> None:
    """Well-formed messages with hostile contents (out-of-range timestamps, unknown enum values,
    huge integers, odd strings) for every RPC, as the role allowed to call it."""
    checker = Checker(shared_server)
    method = BY_NAME[data.draw(st.sampled_from(sorted(BY_NAME)), label="method")]
    request = data.draw(messages(method.input_type), label="request")
    checker.send(method, request.SerializeToString(), shared_server.metadata(role_for(method)))


@given(report=reports, data=st.data())
@settings(FUZZ, max_examples=300)
def test_truncated_report_requests(shared_server: SecureServer, report: tuple,  # type: ignore[type-arg]
                                   data: st.DataObject) -> None:
    checker = Checker(shared_server)
    encoded = build(report).SerializeToString()
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)), label="cut")
    answer = checker.send(REPORT, encoded[:cut], shared_server.metadata(Role.INGEST))
    assert answer.code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                           grpc.StatusCode.RESOURCE_EXHAUSTED}, answer
