"""The vocabulary: pure values every layer above shares, and no behaviour that needs a store,
a network or a clock's real time.

`policy` (what a window freezes), `config` (TOML -> `Config`), `calendar` (windows and their
ids), `statistics`, `roles`, `clock` (the injected `Clock`), `hierarchy` (the organisation
tree), `ledger_format` (the ledger entry bytes), `otlp_mapping` (the `[otlp]` section) and
`plan_intervals` (what a release plan gives teams of given sizes).

Imports only `privacy/` of `chorus.server` (tests/test_layers.py): nothing in the vocabulary
imports the store, the domain, a transport or a front end.
"""
