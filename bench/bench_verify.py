"""Offline verification of a 100k-entry ledger, next to a bare Ed25519 signature check.

    python bench/bench_verify.py [--entries N] [--anchor-samples M]

Builds a ledger of N entries (default 100,000; almost all releases, as a busy year of
team-windows produces) with the real `Ledger.append` and signing key in a SQLite store,
exports it to JSON Lines through the same paged reads StreamLedger uses, and verifies the
file with `chorus.server.verifier.verify`. The anchor is one bare `Ed25519PublicKey.verify` per
entry, measured in the same run: the ratio says how much the verifier's other checks
(canonical-form check, hash recomputation, JSON, OpenDP epsilon, budgets) add on top of the signature each entry
needs anyway. The target is a total verification time under 30 s.
"""

from __future__ import annotations

import argparse
import functools
import platform
import random
import re
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _bench import parse
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chorus.server.domain import audit
from chorus.server.domain.ledger import Ledger, Signer
from chorus.server.model import config
from chorus.server.model.calendar import WindowSpan, window_of
from chorus.server.model.policy import Policy
from chorus.server.privacy import mechanisms
from chorus.server.store import Tx, open_database
from chorus.server.verifier import verify

TEAMS = [f"team-{i:03d}" for i in range(100)]
TEAM_SIZE = 10
FIRST_DAY = datetime(2026, 1, 1, tzinfo=UTC)


def bench_policy() -> Policy:
    """Daily windows with a budget that covers every statistic of every metric for every team."""
    text = re.sub(r'(?m)^length = .*$', 'length = "day"', config.DEFAULT_TOML)
    text, found = re.subn(r'(?m)^rho_per_window = .*$', 'rho_per_window = "10"', text)
    assert found == 1, "the default config has no rho_per_window line to replace"
    return config.parse(tomllib.loads(text)).policy


def build(path: Path, entries: int) -> Signer:
    """A ledger of `entries` entries: per day, window_open, window_close, then releases."""
    policy = bench_policy()
    signer = Signer(Ed25519PrivateKey.generate())
    ledger = Ledger(signer)
    db = open_database("", path)
    rng = random.Random(7)
    written = day = 0
    while written < entries:
        span = window_of(FIRST_DAY + timedelta(days=day), policy.window_length)
        written += db.run(functools.partial(_window, ledger=ledger, policy=policy, span=span,
                                            limit=entries - written, rng=rng), name="bench_window")
        day += 1
    db.close()
    return signer


def _window(tx: Tx, *, ledger: Ledger, policy: Policy, span: WindowSpan, limit: int,
            rng: random.Random) -> int:
    """One day's entries, at most `limit`: its open and close, then every team's releases."""
    closes = span.end + timedelta(seconds=policy.grace_seconds)
    ledger.append(tx, "window_open", {
        "window": span.id, "start": span.start.isoformat(), "end": span.end.isoformat(),
        "closes_at": closes.isoformat(), "policy": policy.to_json()}, span.start)
    ledger.append(tx, "window_close", {
        "window": span.id, "key_destroyed": True,
        "by": "closer", "team_sizes": dict.fromkeys(TEAMS, TEAM_SIZE)}, closes)
    released = [(m, s) for m in policy.metrics for s in ("sum", "count", "histogram")]
    n = 2
    for team in TEAMS:
        spent = type(policy.budget_per_window)(0)  # epsilon or rho, as the policy charges
        for metric, stat in [*((m.name, s) for m, s in released), ("", "active")]:
            if n >= limit:
                return n
            bound = policy.metric(metric)
            sensitivity = bound.max_per_user if bound and stat == "sum" else 1
            mech = mechanisms.calibrate(sensitivity, policy.default_charge[stat], stat == "histogram")
            spent += mech.epsilon
            value: str | list[str] = str(rng.randrange(100_000))
            if bound and stat == "histogram":
                value = [str(rng.randrange(12)) for _ in range(len(bound.histogram_edges) + 1)]
            ledger.append(tx, "release", {
                "release_id": f"{span.id}/{team}/{metric}/{stat}", "window": span.id, "team": team,
                "metric": metric, "statistic": stat, "mechanism": mech.mechanism,
                "sensitivity": sensitivity, "scale": mech.scale, mech.epsilon.UNIT: str(mech.epsilon),
                "value": value, "ci95": mech.ci95, "budget_cap": str(policy.budget_per_window),
                "budget_spent_after": str(spent), "by": "analyst"}, closes + timedelta(hours=1))
            n += 1
    return n


def export(data_dir: Path, out: Path) -> int:
    db = open_database("", data_dir)
    count = 0
    with out.open("w", encoding="utf-8") as f:
        for page in audit.ledger_pages(db, 1, audit.LEDGER_PAGE):
            for entry in page:
                f.write(verify.export_line(entry) + "\n")
                count += 1
    db.close()
    return count


def bare_verify_seconds(samples: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one Ed25519 signature check of a 32-byte hash."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [random.randbytes(32) for _ in range(samples)]
    signed = [(key.sign(m), m) for m in messages]
    wall, cpu = time.perf_counter(), time.process_time()
    for signature, message in signed:
        public.verify(signature, message)
    return (time.perf_counter() - wall) / samples, (time.process_time() - cpu) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--anchor-samples", type=int, default=20_000)
    args = parse(parser, smoke={"entries": 300, "anchor_samples": 100})
    print(f"python {platform.python_version()} on {platform.machine()}, {args.entries:,} entries")
    with tempfile.TemporaryDirectory() as tmp:
        data, ledger_file = Path(tmp) / "data", Path(tmp) / "ledger.jsonl"
        data.mkdir()
        start = time.perf_counter()
        signer = build(data, args.entries)
        built = time.perf_counter() - start
        start = time.perf_counter()
        exported = export(data, ledger_file)
        exporting = time.perf_counter() - start
        size = ledger_file.stat().st_size
        anchor, anchor_cpu = bare_verify_seconds(args.anchor_samples)
        start, cpu = time.perf_counter(), time.process_time()
        report = verify.verify_file(ledger_file, signer.public_key_pem().encode())
        verifying, verifying_cpu = time.perf_counter() - start, time.process_time() - cpu
    if not report.ok or report.entries != exported:
        print(f"verification failed: {report.violations[:5]}", file=sys.stderr)
        sys.exit(1)
    per_entry, per_entry_cpu = verifying / exported, verifying_cpu / exported
    print(f"build (append + sign in SQLite): {built:8.2f} s")
    print(f"export to JSON Lines:            {exporting:8.2f} s  ({size / 1e6:.1f} MB)")
    print(f"verify, wall / CPU:              {verifying:8.2f} s / {verifying_cpu:.2f} s  "
          f"({report.kinds['release']:,} releases, {len(report.totals):,} team-windows)")
    print(f"verify per entry, wall / CPU:    {per_entry * 1e6:8.1f} us / {per_entry_cpu * 1e6:.1f} us")
    print(f"bare Ed25519 verify (anchor):    {anchor * 1e6:8.1f} us / {anchor_cpu * 1e6:.1f} us")
    # CPU time is the steadier ratio on a shared machine: other processes inflate wall time.
    print(f"ratio verify / anchor, wall / CPU: {per_entry / anchor:6.2f}x / "
          f"{per_entry_cpu / anchor_cpu:.2f}x")
    print(f"target: verify under 30 s wall -> {'met' if verifying < 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
