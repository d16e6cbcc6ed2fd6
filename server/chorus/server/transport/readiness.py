"""systemd readiness (`Type=notify`): `READY=1` on $NOTIFY_SOCKET once `chorus serve` serves.

The protocol is one datagram on the unix socket systemd names in $NOTIFY_SOCKET (sd_notify(3));
a leading `@` names an abstract socket. Written here in a few lines rather than through a
dependency. Only the main process sends (under `--workers`, the parent, after every worker is
ready), as systemd's default `NotifyAccess=main` expects. Without $NOTIFY_SOCKET nothing is sent.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to systemd; False when not run under Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
