"""The most one SDK batch holds: the one definition the SDK builds batches by and the server's
configuration takes as its floors (`chorus.server.model.config`), so a server never refuses, forever,
a batch the SDK cannot make smaller. Public because the server imports it; no dependencies."""

from __future__ import annotations

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_CONTRIBUTIONS", "MAX_NAME_CHARS"]

#: Contributions per batch (the server's limits.max_batch_contributions is at least this).
MAX_BATCH_CONTRIBUTIONS = 5000
#: Serialized bytes per batch, kept well under the server's smallest limits.max_message_bytes (2 MiB).
MAX_BATCH_BYTES = 1024 * 1024
#: Characters of a user id, metric name, source or source version: the server's default
#: limits.max_string_length (and its floor); a longer value would make the server refuse the
#: whole batch, so count() refuses it alone.
MAX_NAME_CHARS = 256
