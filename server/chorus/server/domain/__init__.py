"""The domain: what Chorus does, as services over the store.

Ingest (`ingest`, and `otlp/` for OpenTelemetry points), windows (`windows`: open with a
frozen policy and a fresh key; close = fold + shred; `closer`: the periodic thread), releases
(`release`), the roster, tokens, the signed ledger, the audit trail and pending shreds.

Each public method runs its own transaction through `Database.run` (retried, so every
transaction function is safe to run twice). Imports the store, the vocabulary (`model/`) and
`privacy/`; never a transport or a front end (tests/test_layers.py).
"""
