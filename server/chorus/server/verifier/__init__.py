"""The offline ledger verifier an auditor runs (`verify`): chain, signatures, budgets, noise.

Vendorable: it imports only the vocabulary (`model/`) and `privacy/`, and loads no store, gRPC,
servicer, CLI or dashboard module (tests/test_layers.py imports it alone in a fresh interpreter).
"""
