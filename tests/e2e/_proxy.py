"""A TCP proxy that can cut the connection after the server has answered, before the client hears it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CuttingProxy:
    """Forwards 127.0.0.1:port to a target. When armed, server->client bytes are held until
    `committed()` is true, then both sockets are closed: the client never sees the answer."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed: Callable[[], bool] | None = None
        self.cuts = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, committed: Callable[[], bool]) -> None:
        with self._lock:
            self._armed = committed

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_server and self._cut_now():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _cut_now(self) -> bool:
        with self._lock:
            committed = self._armed
        if committed is None or not committed():
            return False
        with self._lock:
            if self._armed is None:
                return False
            self._armed = None
            self.cuts += 1
            return True

    def close(self) -> None:
        self._closed = True
        self._listener.close()
