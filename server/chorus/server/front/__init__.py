"""What both front ends (the `chorus` CLI and the dashboard) share as API clients: the privacy
statement's text (`statement`), compact numbers (`numbers`), every page of a list and the
resumed ledger stream (`paging`), and the TLS rule of a channel (`client_channel`).

Front ends speak to the server only over its API: `front/` imports the vocabulary and
`privacy/`, never the store, the domain or a transport (tests/test_layers.py).
"""
