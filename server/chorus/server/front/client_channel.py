"""Channels from a front end (the `chorus` CLI, the dashboard) to a Chorus server, with one TLS
rule for both: plaintext only to a loopback address, so a bearer token never crosses a network
in the clear."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

__all__ = ["ChannelError", "channel_credentials", "is_loopback"]


class ChannelError(ValueError):
    """TLS options that do not go together, or a PEM file that cannot be read."""


def is_loopback(address: str) -> bool:
    """Whether host:port (or [v6]:port) names this machine, where plaintext never leaves it."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ChannelError(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(server: str, ca: Path | None, client_cert: Path | None,
                        client_key: Path | None) -> grpc.ChannelCredentials | None:
    """TLS credentials for `server`, or None for plaintext, which only a loopback address gets:
    a bearer token is never sent in the clear across a network. Raises ChannelError."""
    if (client_cert is None) != (client_key is None):
        raise ChannelError("--client-cert and --client-key go together")
    if ca is None and client_cert is None and is_loopback(server):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "CA bundle") if ca else None,  # None: the system's CAs
        private_key=_read_pem(client_key, "client key") if client_key else None,
        certificate_chain=_read_pem(client_cert, "client certificate") if client_cert else None)
