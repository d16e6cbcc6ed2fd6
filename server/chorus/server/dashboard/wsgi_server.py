"""Serving the dashboard with waitress, a pure-Python production WSGI server."""

from __future__ import annotations

import threading
from typing import Any

import waitress
from flask import Flask
from waitress import wasyncore
from waitress.server import BaseWSGIServer


class DashboardServer:
    """A bound (not yet serving) waitress server; `port` is known right away, also for port 0."""

    def __init__(self, app: Flask, listen: str, *, threads: int = 8,
                 trusted_proxy: str | None = None) -> None:
        options: dict[str, Any] = {"listen": listen, "threads": threads, "ident": "chorus-dashboard"}
        if trusted_proxy:
            # Behind a TLS-terminating proxy: believe its X-Forwarded-Proto, so cookies get Secure.
            options.update(trusted_proxy=trusted_proxy, trusted_proxy_headers={"x-forwarded-proto"},
                           clear_untrusted_proxy_headers=True)
        self._map: dict[int, Any] = {}  # waitress's socket map, ours so that `stop` can close it
        server = waitress.create_server(app, map=self._map, **options)
        if not isinstance(server, BaseWSGIServer):  # one --listen address gives one socket
            server.close()
            raise ValueError(f"--listen {listen!r} must name exactly one address")
        self._server = server
        self.port: int = server.effective_port
        host = str(server.effective_host)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop` (or SIGINT/SIGTERM's SystemExit)."""
        self._server.run()

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="chorus-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, finish the worker threads and close the listening socket."""
        self._server.task_dispatcher.shutdown()
        # An empty socket map ends waitress's loop within its one-second poll timeout.
        wasyncore.close_all(self._map)
        if self._thread is not None:
            self._thread.join(timeout=5)
