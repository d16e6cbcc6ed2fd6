"""The ledger's entry format, on its own so an offline verifier needs nothing else of the
server (no store, no gRPC): canonical JSON, the entry body, its hash, the time stamp.

Format (docs/audit.md specifies it byte for byte, for verifiers in any language):

* An entry's **body** is the RFC 8785 (JCS) canonical JSON of the object
  {kind, payload, prev_hash, seq, time}, as UTF-8. Its **hash** is the SHA-256 of those bytes,
  lowercase hex; `prev_hash` inside the body chains it to the previous entry (64 zeros for the
  first). The **signature** is Ed25519 over the 32 raw bytes of the hash.
* The body is built by concatenation from the stored columns (the payload's JCS text kept
  verbatim, never re-parsed), so the bytes the export carries are the bytes that were hashed.
* Every number in a payload is an integer within +-(2**53 - 1) or a finite double: both read
  back exactly in every JSON library (a JavaScript Number holds them). Integers that can exceed
  that range (released values) are written as decimal strings.

Signing and appending live in chorus.server.domain.ledger.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

GENESIS_HASH = "0" * 64
#: The largest integer magnitude a payload may hold as a JSON number (IEEE double exact range).
MAX_SAFE_INTEGER = 2**53 - 1
_BODY_KEYS = ("kind", "payload", "prev_hash", "seq", "time")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) text of `value`: one string per value, in every language.

    Raises ValueError for what JCS cannot represent exactly (NaN, infinities, integers beyond
    +-(2**53 - 1), lone surrogates).
    """
    return rfc8785.dumps(value).decode()


def _jcs_integer(text: str) -> int | float:
    """JSON integers as JCS wrote them: an integral double beyond the safe range is a double."""
    number = int(text)
    return number if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER else float(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("an object repeats a key")
    return obj


def entry_body(seq: int, at: str, kind: str, payload: str, prev_hash: str) -> str:
    """The exact text an entry's hash covers: JCS of {kind, payload, prev_hash, seq, time}.

    `payload` is the payload's JCS text and is embedded verbatim; the keys are written in JCS
    order, so the result is the JCS text of the whole object.
    """
    return (f'{{"kind":{canonical_json(kind)},"payload":{payload},"prev_hash":"{prev_hash}",'
            f'"seq":{seq},"time":{canonical_json(at)}}}')


def parse_body(body: str) -> dict[str, Any]:
    """The fields of an entry body, checked to be in ledger form; ValueError naming the problem.

    Ledger form: JCS canonical (which also rules out repeated keys), exactly the five keys,
    seq an integer >= 1, time and kind strings, payload an object, prev_hash 64 lowercase hex.
    """
    try:
        fields = json.loads(body, parse_int=_jcs_integer, object_pairs_hook=_unique_keys,
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(fields, dict) or tuple(sorted(fields)) != _BODY_KEYS:
        raise ValueError(f"body must be a JSON object with exactly the keys {', '.join(_BODY_KEYS)}")
    seq, payload = fields["seq"], fields["payload"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
        raise ValueError("body.seq must be an integer >= 1")
    if not (isinstance(fields["time"], str) and isinstance(fields["kind"], str)
            and isinstance(payload, dict)):
        raise ValueError("body.time and body.kind must be strings and body.payload an object")
    if not (isinstance(fields["prev_hash"], str) and _HEX64.match(fields["prev_hash"])):
        raise ValueError("body.prev_hash must be 64 lowercase hex digits")
    try:
        canonical = canonical_json(fields)
    except ValueError as exc:
        raise ValueError(f"body cannot be canonical JSON: {exc}") from None
    if canonical != body:
        raise ValueError("body is not in RFC 8785 canonical form (key order, spacing, number or "
                         "string encoding)")
    return fields


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in the ledger")


def entry_hash(body: str) -> str:
    """The chained hash of one entry: SHA-256 of its body's UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed entry as stored: the body's parts, its hash and signature."""

    seq: int
    at: str
    kind: str
    payload: str  # JCS text
    prev_hash: str
    hash: str
    signature: str

    @property
    def body(self) -> str:
        """The exact text that was hashed (see `entry_body`)."""
        return entry_body(self.seq, self.at, self.kind, self.payload, self.prev_hash)

    @classmethod
    def from_signed(cls, body: str, hash: str, signature: str) -> Entry:
        """An entry from its body, as StreamLedger sends it; ValueError if not in ledger form.

        Nothing is verified here (that is the verifier's job); the body is only taken apart.
        """
        fields = parse_body(body)
        return cls(fields["seq"], fields["time"], fields["kind"], canonical_json(fields["payload"]),
                   fields["prev_hash"], hash, signature)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def policy_sha256(policy_json: dict[str, object]) -> str:
    """SHA-256 of a policy's canonical JSON: the identity a "config" entry records."""
    return hashlib.sha256(canonical_json(policy_json).encode()).hexdigest()
