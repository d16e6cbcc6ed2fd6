"""The offline verifier: a clean export passes; every kind of tampering is caught and the
verifier names the entry it found wrong."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.server.domain.ledger import Signer
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.root import Chorus
from chorus.server.verifier import verify

from .conftest import (
    DEFAULT_EPSILON,
    RELEASES,
    TEAMS,
    WINDOW,
    Entries,
    forge,
    line,
    policy_of,
    release_payload,
    resign,
    run,
    seq_of,
    write_jsonl,
)


def rules_at(report: verify.Report, line: int) -> set[str]:
    return {v.rule for v in report.violations if v.line == line}


def test_a_clean_export_verifies_with_totals_per_team_window(entries: Entries, public_key: bytes,
                                                             tmp_path: Path) -> None:
    report = verify.verify_file(write_jsonl(tmp_path / "ledger.jsonl", entries), public_key)
    assert report.ok, report.violations
    assert report.entries == len(entries)
    assert report.kinds["release"] == RELEASES
    assert report.kinds["window_open"] == 2 and report.kinds["window_close"] == 1
    assert report.kinds["config"] == 1 and report.kinds["roster_import"] == 1
    assert report.head == verify.Head(entries[-1]["seq"], entries[-1]["hash"])
    red, blue = report.totals[(WINDOW, "team-red")], report.totals[(WINDOW, "team-blue")]
    assert (red.releases, blue.releases) == (4, 1)
    assert red.cap == blue.cap == Epsilon.parse("1")
    assert red.spent == sum((Epsilon.parse(e["payload"]["epsilon"]) for e in entries
                             if e["kind"] == "release" and e["payload"]["team"] == "team-red"), Epsilon(0))
    assert set(report.totals) == {(WINDOW, t) for t in TEAMS}


# --- changing any field of one entry ---------------------------------------------------------

def _bump_seq(e: dict[str, Any]) -> None:
    e["seq"] += 100


def _change_time(e: dict[str, Any]) -> None:
    e["time"] = e["time"].replace("2026", "2025")


def _change_kind(e: dict[str, Any]) -> None:
    e["kind"] = "token_create"


def _change_payload(field: str, value: Any) -> Any:
    def change(e: dict[str, Any]) -> None:
        e["payload"][field] = value
    return change


def _bump_value(e: dict[str, Any]) -> None:
    e["payload"]["value"] = str(int(e["payload"]["value"]) + 1)  # a fixed value would equal the noisy one


def _flip_hex(field: str) -> Any:
    def change(e: dict[str, Any]) -> None:
        text = e[field]
        e[field] = ("0" if text[0] != "0" else "1") + text[1:]
    return change


FIELD_CHANGES = {
    "seq": (_bump_seq, {"seq", "hash"}),
    "time": (_change_time, {"hash"}),
    "kind": (_change_kind, {"hash"}),
    "payload.value": (_bump_value, {"hash"}),
    "payload.epsilon": (_change_payload("epsilon", "0.000001"), {"hash", "epsilon"}),
    "payload.team": (_change_payload("team", "team-blue"), {"hash"}),
    "payload.by": (_change_payload("by", "someone-else"), {"hash"}),
    "prev_hash": (_flip_hex("prev_hash"), {"chain", "hash"}),
    "hash": (_flip_hex("hash"), {"hash", "signature"}),
    "signature": (_flip_hex("signature"), {"signature"}),
}


@pytest.mark.parametrize("change", FIELD_CHANGES, ids=list(FIELD_CHANGES))
def test_changing_any_field_of_an_entry_is_named(change: str, entries: Entries, public_key: bytes) -> None:
    target = seq_of(entries, "release", statistic="count")
    mutate, expected = FIELD_CHANGES[change]
    tampered = copy.deepcopy(entries)
    mutate(tampered[target - 1])
    report = run(tampered, public_key)
    assert not report.ok
    assert expected <= rules_at(report, target), report.violations
    assert min(v.line for v in report.violations if v.line is not None) == target


def test_a_deleted_entry_is_named_by_the_entry_after_the_gap(entries: Entries, public_key: bytes) -> None:
    target = seq_of(entries, "release", statistic="histogram")
    report = run(entries[:target - 1] + entries[target:], public_key)
    first = report.violations[0]
    assert (first.seq, first.rule) == (target + 1, "seq")
    assert f"expected {target}" in first.message
    assert {"seq", "chain"} <= rules_at(report, target)
    # The deleted release's charge is missing from the next one's stated running total too.
    assert "budget_spent" in rules_at(report, target)


def test_two_reordered_entries_are_both_named(entries: Entries, public_key: bytes) -> None:
    a = seq_of(entries, "release", statistic="sum", team="team-red")
    swapped = [*entries[:a - 1], entries[a], entries[a - 1], *entries[a + 1:]]
    report = run(swapped, public_key)
    named = {v.seq for v in report.violations if v.rule == "seq"}
    assert {a, a + 1} <= named


def test_an_inserted_forged_entry_is_named(chorus: Chorus, entries: Entries, public_key: bytes) -> None:
    forger = Signer(Ed25519PrivateKey.generate())
    at = seq_of(entries, "release", statistic="active")
    fake = {**entries[at - 1], "seq": at + 1, "kind": "token_create",
            "payload": {"name": "backdoor", "role": "analyst", "by": "admin"}}
    tampered = [*entries[:at], fake, *entries[at:]]
    tampered[at] = resign(tampered, forger, at)[at]  # correct chain and hash, the forger's signature
    report = run(tampered, public_key)
    assert rules_at(report, at + 1) == {"signature"}
    assert {"seq", "chain"} <= rules_at(report, at + 2)


def test_a_ledger_resigned_with_another_key_fails_on_every_entry(entries: Entries,
                                                                 public_key: bytes) -> None:
    forged = resign(entries, Signer(Ed25519PrivateKey.generate()))
    report = run(forged, public_key)
    assert [v.rule for v in report.violations] == ["signature"] * len(entries)
    assert report.violations[0].seq == 1


def test_a_truncated_tail_passes_alone_but_fails_against_the_pinned_head(entries: Entries,
                                                                         public_key: bytes) -> None:
    pinned = f"{entries[-1]['seq']}:{entries[-1]['hash']}"
    assert run(entries[:-2], public_key).ok  # a clean prefix is a valid ledger on its own
    report = run(entries[:-2], public_key, expect=pinned)
    assert [(v.seq, v.rule, v.line) for v in report.violations] == [(entries[-1]["seq"], "expect_head", None)]
    assert "truncated" in report.violations[0].message
    assert run(entries, public_key, expect=pinned).ok


def test_history_rewritten_and_resigned_with_the_real_key_fails_against_the_pinned_head(
        released: Chorus, entries: Entries, public_key: bytes) -> None:
    pinned = f"{entries[-1]['seq']}:{entries[-1]['hash']}"
    target = seq_of(entries, "release", statistic="count")
    rewritten = copy.deepcopy(entries)
    _bump_value(rewritten[target - 1])
    rewritten = resign(rewritten, released.ledger.signer, target - 1)
    assert run(rewritten, public_key).ok  # the operator holds the key: only the pin catches this
    report = run(rewritten, public_key, expect=pinned)
    assert [(v.seq, v.rule) for v in report.violations] == [(entries[-1]["seq"], "expect_head")]
    assert "rewritten" in report.violations[0].message


def test_a_stated_epsilon_below_what_the_scale_implies_is_named(released: Chorus, entries: Entries,
                                                                public_key: bytes) -> None:
    target = seq_of(entries, "release", team="team-blue")  # the team-window's only release
    tampered = copy.deepcopy(entries)
    payload = tampered[target - 1]["payload"]
    payload["epsilon"] = payload["budget_spent_after"] = "0.01"
    tampered = resign(tampered, released.ledger.signer, target - 1)
    report = run(tampered, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(target, "epsilon")]
    assert "0.01" in report.violations[0].message


def test_a_sensitivity_below_the_frozen_bound_is_named(released: Chorus, entries: Entries,
                                                       public_key: bytes) -> None:
    target = seq_of(entries, "release", team="team-blue")
    tampered = copy.deepcopy(entries)
    payload = tampered[target - 1]["payload"]
    payload["sensitivity"] = 1  # a sum's sensitivity is the metric's max_per_user (2000 here)
    payload["scale"] = math.nextafter(20.0, 21)  # consistent with the 0.05 charged at sensitivity 1
    tampered = resign(tampered, released.ledger.signer, target - 1)
    report = run(tampered, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(target, "sensitivity")]
    assert "2000" in report.violations[0].message


def test_a_double_release_of_the_same_statistic_is_named(released: Chorus, entries: Entries,
                                                        public_key: bytes) -> None:
    policy = policy_of(released)
    first = seq_of(entries, "release", team="team-blue")
    spent = Epsilon.parse(entries[first - 1]["payload"]["budget_spent_after"])
    forged = copy.deepcopy(entries)
    forge(forged, released.ledger.signer, "release",
          release_payload(policy, "again", WINDOW, "team-blue", "ai.requests", "sum", DEFAULT_EPSILON,
                          spent))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "double_release")]
    assert f"entry {first}" in report.violations[0].message


def test_an_overspent_team_window_is_named(released: Chorus, entries: Entries, public_key: bytes) -> None:
    policy = policy_of(released)
    first = seq_of(entries, "release", team="team-blue")
    spent = Epsilon.parse(entries[first - 1]["payload"]["budget_spent_after"])
    forged = copy.deepcopy(entries)
    for statistic in ("count", "histogram"):  # 0.05 + 0.6 + 0.6 > 1
        forge(forged, released.ledger.signer, "release",
              release_payload(policy, statistic, WINDOW, "team-blue", "ai.requests", statistic,
                              Epsilon.parse("0.6"), spent))
        spent = Epsilon.parse(forged[-1]["payload"]["budget_spent_after"])
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "budget_cap")]
    assert report.totals[(WINDOW, "team-blue")].spent == spent


def test_a_stated_running_total_that_differs_from_the_charges_is_named(
        released: Chorus, entries: Entries, public_key: bytes) -> None:
    target = seq_of(entries, "release", team="team-blue")
    tampered = copy.deepcopy(entries)
    tampered[target - 1]["payload"]["budget_spent_after"] = "0.02"
    tampered = resign(tampered, released.ledger.signer, target - 1)
    assert [(v.seq, v.rule) for v in run(tampered, public_key).violations] == [(target, "budget_spent")]


def test_a_release_while_its_window_is_open_is_named(released: Chorus, entries: Entries,
                                                     public_key: bytes) -> None:
    policy = policy_of(released)
    forged = copy.deepcopy(entries)
    forge(forged, released.ledger.signer, "release",
          release_payload(policy, "early", "2026-11-26", "team-red", "ai.tokens", "sum", DEFAULT_EPSILON,
                          Epsilon(0)))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "window")]
    assert "still open" in report.violations[0].message


def test_a_release_before_its_window_open_is_named(released: Chorus, entries: Entries,
                                                   public_key: bytes) -> None:
    policy = policy_of(released)
    opened = seq_of(entries, "window_open", window=WINDOW)
    forged = copy.deepcopy(entries[:opened - 1])
    forge(forged, released.ledger.signer, "release",
          release_payload(policy, "before", WINDOW, "team-red", "ai.tokens", "sum", DEFAULT_EPSILON,
                          Epsilon(0)))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(opened, "window")]
    assert "before any window_open" in report.violations[0].message


def test_a_release_for_a_team_below_k_is_named(released: Chorus, entries: Entries,
                                               public_key: bytes) -> None:
    forged = copy.deepcopy(entries)
    forge(forged, released.ledger.signer, "release",
          release_payload(policy_of(released), "tiny", WINDOW, "team-tiny", "ai.tokens", "count",
                          DEFAULT_EPSILON, Epsilon(0)))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "min_team_size")]
    assert "2 people" in report.violations[0].message and "k = 5" in report.violations[0].message


def test_a_release_past_the_frozen_retention_is_named(released: Chorus, entries: Entries,
                                                      public_key: bytes) -> None:
    policy = policy_of(released)
    window_end = datetime(2026, 11, 26, tzinfo=UTC)
    forged = copy.deepcopy(entries)
    forge(forged, released.ledger.signer, "release",
          release_payload(policy, "late", WINDOW, "team-blue", "ai.requests", "count", DEFAULT_EPSILON,
                          Epsilon.parse(entries[seq_of(entries, "release", team="team-blue") - 1]
                                        ["payload"]["budget_spent_after"])),
          at=window_end + timedelta(days=policy.retention_windows))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "retention")]


def test_a_release_for_a_team_not_in_the_window_close_is_named(released: Chorus, entries: Entries,
                                                              public_key: bytes) -> None:
    close = seq_of(entries, "window_close", window=WINDOW)
    forged = copy.deepcopy(entries)
    forge(forged, released.ledger.signer, "release",
          release_payload(policy_of(released), "ghost", WINDOW, "team-ghost", "ai.tokens", "count",
                          DEFAULT_EPSILON, Epsilon(0)))
    report = run(forged, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(forged[-1]["seq"], "team")]
    assert "team-ghost" in report.violations[0].message and f"(entry {close})" in report.violations[0].message


def _resigned_release(released: Chorus, entries: Entries, change: dict[str, Any]) -> tuple[int, Entries]:
    """team-blue's release with payload fields changed (None removes one), consistently re-signed."""
    target = seq_of(entries, "release", team="team-blue")
    tampered = copy.deepcopy(entries)
    payload = tampered[target - 1]["payload"]
    for name, value in change.items():
        if value is None:
            del payload[name]
        else:
            payload[name] = value
    return target, resign(tampered, released.ledger.signer, target - 1)


RESIGNED_RELEASE_CHANGES = {
    # rule: (change to team-blue's release payload, text the message must hold)
    "release": ({"epsilon": None}, "missing field 'epsilon'"),
    "mechanism": ({"mechanism": "gaussian"}, "'gaussian' is not one of discrete_laplace, discrete_gaussian"),
    "statistic": ({"statistic": "median"}, "statistic must be one of"),
    "value": ({"value": "007"}, "value must be a decimal integer string"),
}


@pytest.mark.parametrize("rule", RESIGNED_RELEASE_CHANGES, ids=list(RESIGNED_RELEASE_CHANGES))
def test_a_resigned_release_breaking_one_rule_is_named_by_that_rule(rule: str, released: Chorus,
                                                                    entries: Entries, public_key: bytes) -> None:
    change, text = RESIGNED_RELEASE_CHANGES[rule]
    target, tampered = _resigned_release(released, entries, change)
    report = run(tampered, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(target, rule)]
    assert text in report.violations[0].message, report.violations[0].message


def test_a_release_in_a_valid_mechanism_other_than_its_windows_is_named_twice(
        released: Chorus, entries: Entries, public_key: bytes) -> None:
    """A forged discrete_gaussian release in a discrete_laplace window: the mechanism is not the
    frozen one, and its epsilon charge is in the wrong unit for the mechanism it claims."""
    target, tampered = _resigned_release(released, entries, {"mechanism": "discrete_gaussian"})
    report = run(tampered, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(target, "mechanism"), (target, "epsilon")]
    mechanism, unit = (v.message for v in report.violations)
    assert f"mechanism 'discrete_gaussian' is not the 'discrete_laplace' frozen in the policy of {WINDOW}" in mechanism
    assert "but discrete_gaussian charges in rho" in unit


def test_a_malformed_line_is_named_by_line_number(entries: Entries, public_key: bytes) -> None:
    lines = [line(e) for e in entries]
    lines[2] = lines[2][:-5]
    report = verify.verify_lines(lines, verify.load_public_key(public_key))
    assert report.violations[0].line == 3 and report.violations[0].rule == "format"


def test_a_malformed_pinned_head_or_key_is_a_usage_error(public_key: bytes) -> None:
    with pytest.raises(verify.VerifyError, match="SEQ:HASH"):
        verify.parse_head("12:not-a-hash")
    with pytest.raises(verify.VerifyError, match="PEM"):
        verify.load_public_key(b"not a key")


def test_epsilon_is_recomputed_with_opendp_and_rounded_up() -> None:
    # OpenDP's map for discrete Laplace at d_in = s is s / scale as a float; the charge is that
    # float's exact value rounded up, so 1 / 20.0 (the float 0.05000000000000000277) costs 0.050001
    # and the next float scale up costs 0.05.
    assert verify.implied_epsilon(verify.MECHANISM, False, 20.0, 1) == Epsilon.parse("0.050001")
    above = math.nextafter(20.0, 21)
    assert verify.implied_epsilon(verify.MECHANISM, False, above, 1) == Epsilon.parse("0.05")
    assert verify.implied_epsilon(verify.MECHANISM, True, 3.0, 1) == Epsilon.parse("0.333334")
    assert verify.implied_epsilon(verify.MECHANISM, False, 40000.0, 2000) == Epsilon.parse("0.050001")
    with pytest.raises(ValueError, match="gaussian"):
        verify.implied_epsilon("gaussian", False, 1.0, 1)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                         inner, max_size=4),
                           max_leaves=10)


@pytest.mark.slow
@given(data=st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_content_is_reported_never_crashes(entries: Entries, public_key: bytes,
                                                   data: st.DataObject) -> None:
    genuine = [line(e) for e in entries]
    lines = list(genuine)
    at = data.draw(st.integers(0, len(lines) - 1), label="entry")
    exported = json.loads(lines[at])
    fields = json.loads(exported["body"])
    where = data.draw(st.sampled_from(["line", "body", "payload"]), label="where")
    obj = exported if where == "line" else fields if where == "body" else fields["payload"]
    obj[data.draw(st.sampled_from(sorted(obj)), label="field")] = data.draw(JSON_VALUES, label="value")
    if where != "line":
        exported["body"] = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    lines[at] = json.dumps(exported)
    lines.insert(data.draw(st.integers(0, len(lines)), label="at"), data.draw(st.text(max_size=40)))
    report = verify.verify_lines(lines, verify.load_public_key(public_key))
    assert not report.ok or all(text in genuine for text in lines if text.strip())
