"""The signed, hash-chained ledger: what was released, opened, closed, imported and changed.

The entry format (canonical JSON bodies, hashes, time stamps) is chorus.server.model.ledger_format,
specified byte for byte in docs/audit.md; this module signs entries (Ed25519, the key a file
in the data directory) and appends them. An entry is appended inside the same transaction as
the change it records.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chorus.server import store
from chorus.server.model.ledger_format import Entry, canonical_json, entry_body, entry_hash, format_time
from chorus.server.store import Tx

KEY_FILE = "ledger-signing-key.pem"


class Signer:
    """The server's Ed25519 ledger key, kept in the data directory with mode 0600."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Signer:
        """Load the key, creating it on first start; replicas starting together agree on one key."""
        path = data_dir / KEY_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            # Write a private temporary file, then link it into place: the key file appears
            # complete or not at all, and a replica that loses the race loads the winner's key.
            fd, tmp = tempfile.mkstemp(prefix=".ledger-key-", dir=data_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(loaded)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> str:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, hash_hex: str) -> str:
        return self._key.sign(bytes.fromhex(hash_hex)).hex()


class Ledger:
    """Appends entries within a caller's transaction."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def append(self, tx: Tx, kind: str, payload: dict[str, Any], at: datetime) -> Entry:
        # The conditional UPDATE takes the head's row lock: appends are linear across replicas.
        seq, prev_hash = store.ledger.advance_head(tx)
        stamp = format_time(at)
        body = canonical_json(payload)
        digest = entry_hash(entry_body(seq, stamp, kind, body, prev_hash))
        entry = Entry(seq, stamp, kind, body, prev_hash, digest, self.signer.sign(digest))
        store.ledger.append(tx, (entry.seq, entry.at, entry.kind, entry.payload, entry.prev_hash, entry.hash,
                                 entry.signature))
        return entry


def read_entries(tx: Tx, from_seq: int, limit: int) -> list[Entry]:
    return [Entry(*row) for row in store.ledger.read(tx, from_seq, limit)]
