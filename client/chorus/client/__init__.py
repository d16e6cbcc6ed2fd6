"""Chorus client SDK: count AI usage per person, report it for privacy-preserving team statistics.

Embed one Client per process::

    from chorus.client import Client

    chorus = Client(source="my-ai-tool", source_version="1.2.3")  # config from CHORUS_* env
    chorus.count("ai.tokens", 1234, user="alice@example.com")

count() is a lock-protected dict increment that never raises nor does I/O; a daemon
thread sends pre-aggregated batches over gRPC, retrying safely (the server de-duplicates
by batch id). See docs/sdk.md.
"""

import logging

from chorus.client._client import Client, Clock
from chorus.client._delivery import ClientError
from chorus.client._stats import Stats
from chorus.client._transport import RETRYABLE_CODES, GrpcTransport, Transport, TransportError

# A library must not print through logging's last-resort handler: the host decides
# whether and where the SDK's warnings appear.
logging.getLogger("chorus.client").addHandler(logging.NullHandler())

__all__ = ["RETRYABLE_CODES", "Client", "ClientError", "Clock", "GrpcTransport", "Stats", "Transport", "TransportError"]
