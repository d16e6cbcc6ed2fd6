"""The optional OTLP/HTTP listener: `POST /v1/metrics`, protobuf or JSON, gzip or not; `POST
/v1/traces` and `/v1/logs` are admitted like metrics, then answered with an empty success and
their bodies dropped unread.

Answers follow the OTLP/HTTP specification: 200 with an `ExportMetricsServiceResponse`
(`partial_success` when points were rejected) in the request's encoding; 400 with a
`google.rpc.Status` for a body that cannot be decoded or is over the point or attribute
limits; 401 without a valid token, 403 for a token of another role (both decided by
`admission.py`, as for gRPC); 413 for a body over
`limits.max_message_bytes` (before or after gzip); 415 for another content type or encoding;
429 (rate limit) and 503 (store unavailable) with `Retry-After`. The bearer token is checked
from the headers before the body is read, so a refused request costs no parsing.

Plain stdlib `http.server`, one thread per connection, at most `MAX_CONNECTIONS` of them and
`MAX_PER_PEER` from one address, each request under a whole-request deadline
(`REQUEST_SECONDS`), and `SO_REUSEADDR` so that a restart binds at once;
TLS (and mTLS) as for gRPC, with the handshake done on the connection's own thread so a slow
client cannot stall the others.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import ssl
import tempfile
import threading
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.rpc import code_pb2, status_pb2

from chorus.server.domain.otlp.export import OtlpIngestor
from chorus.server.domain.otlp.points import InvalidExport
from chorus.server.model.roles import Principal
from chorus.server.store import StoreUnavailable
from chorus.server.transport import otlp_decode
from chorus.server.transport.admission import Admission, Refused, bearer_token
from chorus.server.transport.ratelimit import RateLimited, RateLimiter
from chorus.server.transport.services.otlp import SERVICE, response

_log = logging.getLogger(__name__)
PATH = "/v1/metrics"
#: Accepted from role ingest and discarded unread (services/otlp.py says why): the body is read
#: within the same limits as metrics, never decoded, and answered with an empty success.
DISCARDED_PATHS = frozenset({"/v1/traces", "/v1/logs"})
#: Seconds a connection may sit idle or take to send its request.
SOCKET_TIMEOUT = 30.0
#: Seconds a request may take as a whole, from when the handler starts waiting for it to its
#: answer: the socket timeout restarts on every byte, so a client dribbling one byte at a time
#: would hold a slot forever without this deadline. The connection is shut down when it passes.
REQUEST_SECONDS = 30.0
#: Connections served at once (one thread each); more are answered 503 and closed at once, so a
#: flood of idle connections cannot exhaust the process's threads.
MAX_CONNECTIONS = 64
#: Connections from one peer address at once: one host cannot take every slot.
MAX_PER_PEER = 16
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")
STORE_RETRY_SECONDS = 1
#: How to send a token over OTLP/HTTP, for the refusal of a request without one.
MISSING = "send the header 'Authorization: Bearer <token>' once"
_CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
          404: code_pb2.NOT_FOUND, 405: code_pb2.UNIMPLEMENTED, 411: code_pb2.INVALID_ARGUMENT,
          413: code_pb2.INVALID_ARGUMENT, 415: code_pb2.INVALID_ARGUMENT, 429: code_pb2.RESOURCE_EXHAUSTED,
          500: code_pb2.INTERNAL, 503: code_pb2.UNAVAILABLE}


class _Refused(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def tls_context(cert_chain: bytes, private_key: bytes, client_ca: bytes | None) -> ssl.SSLContext:
    """A server context from PEM bytes (the same files `chorus serve` gives gRPC)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="chorus-tls-") as tmp:  # load_cert_chain reads files only
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert, cert_chain), (key, private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class OtlpHttpServer:
    """`POST /v1/metrics` on its own address, in background threads."""

    def __init__(self, listen: str, otlp: OtlpIngestor, admission: Admission, limiter: RateLimiter,
                 max_body: int, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"otlp": otlp, "admission": admission,
                                                "limiter": limiter, "max_body": max_body})
        self._httpd = _Server((host.strip("[]"), int(port)), handler, tls)
        self.port = self._httpd.server_address[1]
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="chorus-otlp-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR: a restart binds at once although the killed process's connections linger in
    # TIME_WAIT. On Linux it still refuses a second listener on an address in use.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, tls: ssl.SSLContext | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._peers: Counter[str] = Counter()
        self._peers_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._peers_lock:
            admitted = self._peers[peer] < MAX_PER_PEER and self._slots.acquire(blocking=False)
            if admitted:
                self._peers[peer] += 1
        if not admitted:
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)  # plaintext even on a TLS port: the client sees a closed connection
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(peer)
            raise

    def _release(self, peer: str) -> None:
        with self._peers_lock:
            self._peers[peer] -= 1
            if not self._peers[peer]:
                del self._peers[peer]
        self._slots.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]))

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SOCKET_TIMEOUT)
        if self._tls is not None:
            try:
                request = self._tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                _log.debug("OTLP/HTTP TLS handshake failed: %s", type(exc).__name__)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("OTLP/HTTP connection ended with an error", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chorus-otlp"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    otlp: OtlpIngestor
    admission: Admission
    limiter: RateLimiter
    max_body: int

    def handle_one_request(self) -> None:
        """One request under the whole-request deadline (REQUEST_SECONDS)."""
        deadline = threading.Timer(REQUEST_SECONDS, self._cut)
        deadline.daemon = True
        deadline.start()
        try:
            super().handle_one_request()
        finally:
            deadline.cancel()

    def _cut(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; the thread ends

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("OTLP/HTTP %s", self.requestline[:80])  # never the headers (they hold the token)

    def do_GET(self) -> None:
        self._refuse(_Refused(405 if self.path == PATH else 404, f"use POST {PATH}"), otlp_decode.PROTOBUF)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def do_POST(self) -> None:
        kind = otlp_decode.JSON if "json" in (self.headers.get("Content-Type") or "").lower() else otlp_decode.PROTOBUF
        try:
            path = self.path.split("?", 1)[0]
            if path != PATH and path not in DISCARDED_PATHS:
                raise _Refused(404, f"no such path; OTLP metrics go to POST {PATH}")
            who = self._admit()
            kind = self._media()
            if path in DISCARDED_PATHS:
                self._body()  # read (so the connection can carry the next request), then dropped
                self._send(200, b"{}" if kind == otlp_decode.JSON else b"", kind)
                return
            body = otlp_decode.inflate(self._body(), self.headers.get("Content-Encoding"), self.max_body)
            request = otlp_decode.parse(body, kind)
            points = self.otlp.check(request)
            try:
                self.limiter.take(who.name, max(1, points))
            except RateLimited as exc:
                raise _Refused(429, str(exc), exc.retry_after) from None
            result = self.otlp.export(request)
        except _Refused as refused:
            self._refuse(refused, kind)
        except otlp_decode.UnsupportedMedia as exc:
            self._refuse(_Refused(415, str(exc)), kind)
        except otlp_decode.TooLarge as exc:
            self._refuse(_Refused(413, str(exc)), kind)
        except (otlp_decode.BadPayload, InvalidExport) as exc:
            self._refuse(_Refused(400, str(exc)), kind)
        except StoreUnavailable:
            _log.warning("OTLP/HTTP export: store unavailable", exc_info=True)
            self._refuse(_Refused(503, "the store is busy or unreachable; retry later", STORE_RETRY_SECONDS), kind)
        except Exception:
            _log.exception("OTLP/HTTP export failed")
            self._refuse(_Refused(500, "the export failed on the server; the server log has the details"), kind)
        else:
            self._send(200, otlp_decode.response_body(response(result.rejected, result.error_message), kind), kind)

    def _admit(self) -> Principal:
        token = bearer_token(self.headers.get_all("Authorization") or [])
        try:
            return self.admission.admit(token, SERVICE, "OTLP export", missing=MISSING)
        except Refused as refused:
            raise _Refused(401 if refused.unauthenticated else 403, str(refused)) from None
        except StoreUnavailable:
            raise _Refused(503, "the store is busy or unreachable; retry later", STORE_RETRY_SECONDS) from None

    def _media(self) -> str:
        return otlp_decode.media_type(self.headers.get("Content-Type"))

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            raise _Refused(411, "send Content-Length or Transfer-Encoding: chunked")
        try:
            size = int(length)
        except ValueError:
            raise _Refused(400, "Content-Length is not a number") from None
        if size < 0:
            raise _Refused(400, "Content-Length is negative")
        if size > self.max_body:
            raise _Refused(413, f"the body is {size} bytes; the limit is {self.max_body}")
        return self.rfile.read(size)

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Refused(400, "malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, ignored
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise _Refused(413, f"the chunked body exceeds the limit of {self.max_body} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _refuse(self, refused: _Refused, kind: str) -> None:
        self.close_connection = True  # the body may be unread: never parse it as the next request
        status = status_pb2.Status(code=_CODES.get(refused.status, code_pb2.UNKNOWN), message=str(refused))
        headers = {}
        if refused.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
        if refused.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        self._send(refused.status, otlp_decode.response_body(status, kind), kind, headers)

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        with contextlib.suppress(OSError):
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
