"""The mathematics of differential privacy, and nothing else: exact epsilon (`epsilon`), the
accountant of one team-window's budget (`budget`), OpenDP calibration (`mechanisms`) and
consistent estimates over the organisation tree (`consistency`).

The bottom layer: it imports nothing of `chorus.server` outside this folder (tests/test_layers.py),
so the offline verifier and every layer above share one arithmetic.
"""
