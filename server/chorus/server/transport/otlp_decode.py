"""OTLP/HTTP bodies -> `ExportMetricsServiceRequest`, with the size bounded before and after gzip.

Binary protobuf (`application/x-protobuf`) and the OTLP JSON encoding (`application/json`:
lowerCamelCase or original field names, 64-bit integers as strings or numbers, enums as
integers; protobuf's JSON parser accepts all of these, and unknown fields are ignored as the
specification requires). Trace and span ids appear only in exemplars, which Chorus ignores.
"""

from __future__ import annotations

import zlib

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class UnsupportedMedia(ValueError):
    """A Content-Type or Content-Encoding this endpoint does not speak (HTTP 415)."""


class TooLarge(ValueError):
    """The body, or what it inflates to, is over the limit (HTTP 413)."""


class BadPayload(ValueError):
    """The body is not a valid export request of its content type (HTTP 400)."""


def media_type(content_type: str | None) -> str:
    """The request's media type (parameters such as charset dropped), if supported."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        raise UnsupportedMedia(f"Content-Type {kind or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}")
    return kind


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding (gzip or none) removed, at most `limit` bytes."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding != "gzip":
        raise UnsupportedMedia(f"Content-Encoding {coding!r} is not supported; send gzip or no encoding")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadPayload("the body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the body inflates to more than {limit} bytes, the limit")
    if not inflater.eof:
        raise BadPayload("the gzip body is truncated")
    return out


def parse(body: bytes, kind: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError):
            raise BadPayload("the body is not a valid protobuf ExportMetricsServiceRequest") from None
        return request
    try:
        json_format.Parse(body, request, ignore_unknown_fields=True, max_recursion_depth=64)
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError):
        # Fixed text: the parser's own message can quote a value from the body.
        raise BadPayload("the body is not a valid OTLP JSON ExportMetricsServiceRequest") from None
    return request


def response_body(message: object, kind: str) -> bytes:
    """A response message in the request's encoding."""
    if kind == JSON:
        return json_format.MessageToJson(message, indent=None).encode()  # type: ignore[arg-type]
    return message.SerializeToString()  # type: ignore[attr-defined,no-any-return]
