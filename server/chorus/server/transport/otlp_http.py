"""The optional OTLP/HTTP listener: `POST /v1/metrics`, protobuf or JSON, gzip or not; `POST
/v1/traces` and `/v1/logs` are admitted like metrics, then answered with an empty success and
their bodies dropped unread.

Answers follow the OTLP/HTTP specification: 200 with an `ExportMetricsServiceResponse`
(`partial_success` when points were rejected) in the request's encoding; 400 with a
`google.rpc.Status` for a body that cannot be decoded or is over the point or attribute
limits; 401 without a valid token, 403 for a token of another role (both decided by
`admission.py`, as for gRPC); 413 for a body over `limits.max_message_bytes` (before or after
gzip); 415 for another content type or encoding; 429 (rate limit) and 503 (store unavailable)
with `Retry-After`. Every refusal is a `google.rpc.Status` in the request's encoding, those
waitress itself makes (a malformed request, headers or body over its limits) included, and
closes the connection. The token is checked before the body is decoded, so a refused request
costs no parsing.

Served by waitress (a maintained pure-Python WSGI server; the dashboard uses it too): one
thread reads every connection without blocking and hands a request to one of `THREADS` worker
threads only once it has arrived whole, so a slow client holds a socket, never a thread.
Around it, what waitress does not do itself:

* a whole-request deadline: a connection must deliver each request (the TLS handshake
  included, for the first) within `REQUEST_SECONDS` of when the server starts waiting for it,
  checked every second; waitress's own `channel_timeout` restarts on every byte, so a client
  dribbling one byte at a time would otherwise hold its connection forever;
* caps at accept: at most `MAX_CONNECTIONS` at once, and at most `MAX_UNAUTHENTICATED_PER_PEER`
  from one address that have not yet carried a request with an admitted token; more are
  answered 503 and closed at once (not queued). A connection counts as authenticated from
  its first admitted request on, so a collector keeping many connections alive from one
  address is capped only by `MAX_CONNECTIONS`, while connections that never authenticate
  (dribbling, idle, or refused) from one address cannot take more than their share;
* TLS and mTLS (waitress has none): each accepted socket is wrapped without blocking, its
  handshake driven by the same loop (`_Channel`), and only the loop's thread reads or writes
  it (an OpenSSL connection is not to be used by two threads at once);
* `SO_REUSEADDR` (waitress sets it on its listening socket), so a restart binds at once
  although the old process's connections linger in TIME_WAIT.
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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from google.rpc import code_pb2, status_pb2
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask

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
#: Seconds a connection may take to deliver a request, from when the server starts waiting for
#: it (accept, or the previous answer) to its last byte, idle time and TLS handshake included.
#: Checked every second; a connection past it is closed.
REQUEST_SECONDS = 30.0
#: Connections open at once; more are answered 503 and closed at once.
MAX_CONNECTIONS = 256
#: Connections from one address that have not yet carried an admitted request; more from that
#: address are answered 503 and closed at once.
MAX_UNAUTHENTICATED_PER_PEER = 16
#: Worker threads running exports (decoding, the store); connections cost none.
THREADS = 8
#: Bytes one read of a connection may take.
RECV_BYTES = 1 << 18
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")
STORE_RETRY_SECONDS = 1
#: How to send a token over OTLP/HTTP, for the refusal of a request without one.
MISSING = "send the header 'Authorization: Bearer <token>' once"
_CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
          404: code_pb2.NOT_FOUND, 405: code_pb2.UNIMPLEMENTED, 411: code_pb2.INVALID_ARGUMENT,
          413: code_pb2.INVALID_ARGUMENT, 415: code_pb2.INVALID_ARGUMENT, 429: code_pb2.RESOURCE_EXHAUSTED,
          431: code_pb2.INVALID_ARGUMENT, 500: code_pb2.INTERNAL, 501: code_pb2.UNIMPLEMENTED,
          503: code_pb2.UNAVAILABLE}
#: Keys the task adds to each request's WSGI environment: the connection's callbacks.
_ADMITTED, _CLOSE = "chorus.admitted", "chorus.close"


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


def _kind(content_type: str | None) -> str:
    """The encoding of the answer: the request's, protobuf unless it says JSON."""
    return otlp_decode.JSON if "json" in (content_type or "").lower() else otlp_decode.PROTOBUF


def _status_body(status: int, message: str, kind: str) -> bytes:
    return otlp_decode.response_body(status_pb2.Status(code=_CODES.get(status, code_pb2.UNKNOWN),
                                                       message=message), kind)


class OtlpExportApp:
    """The WSGI application: one OTLP/HTTP request to one answer."""

    def __init__(self, otlp: OtlpIngestor, admission: Admission, limiter: RateLimiter, max_body: int) -> None:
        self.otlp = otlp
        self.admission = admission
        self.limiter = limiter
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        kind = _kind(environ.get("CONTENT_TYPE"))
        try:
            status, body, kind = self._answer(environ, kind)
            headers: dict[str, str] = {}
        except _Refused as refused:
            status, headers = refused.status, {}
            if refused.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
            if refused.status == 401:
                headers["WWW-Authenticate"] = "Bearer"
            body = _status_body(refused.status, str(refused), kind)
            environ[_CLOSE]()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", kind), ("Content-Length", str(len(body))), *headers.items()])
        return [body]

    def _answer(self, environ: dict[str, Any], kind: str) -> tuple[int, bytes, str]:
        """(status, body, encoding) of a served request; `_Refused` for every refusal."""
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "POST":
            raise _Refused(405 if path == PATH else 404, f"use POST {PATH}")
        try:
            if path != PATH and path not in DISCARDED_PATHS:
                raise _Refused(404, f"no such path; OTLP metrics go to POST {PATH}")
            who = self._admit(environ.get("HTTP_AUTHORIZATION"))
            environ[_ADMITTED]()
            kind = otlp_decode.media_type(environ.get("CONTENT_TYPE"))
            if "CONTENT_LENGTH" not in environ:
                raise _Refused(411, "send Content-Length or Transfer-Encoding: chunked")
            raw = environ["wsgi.input"].read()  # whole already: waitress read it within max_body
            if path in DISCARDED_PATHS:
                return 200, b"{}" if kind == otlp_decode.JSON else b"", kind
            body = otlp_decode.inflate(raw, environ.get("HTTP_CONTENT_ENCODING"), self.max_body)
            request = otlp_decode.parse(body, kind)
            points = self.otlp.check(request)
            try:
                self.limiter.take(who.name, max(1, points))
            except RateLimited as exc:
                raise _Refused(429, str(exc), exc.retry_after) from None
            result = self.otlp.export(request)
        except _Refused:
            raise
        except otlp_decode.UnsupportedMedia as exc:
            raise _Refused(415, str(exc)) from None
        except otlp_decode.TooLarge as exc:
            raise _Refused(413, str(exc)) from None
        except (otlp_decode.BadPayload, InvalidExport) as exc:
            raise _Refused(400, str(exc)) from None
        except StoreUnavailable:
            _log.warning("OTLP/HTTP export: store unavailable", exc_info=True)
            raise _Refused(503, "the store is busy or unreachable; retry later", STORE_RETRY_SECONDS) from None
        except Exception:
            _log.exception("OTLP/HTTP export failed")
            raise _Refused(500, "the export failed on the server; the server log has the details") from None
        return 200, otlp_decode.response_body(response(result.rejected, result.error_message), kind), kind

    def _admit(self, authorization: str | None) -> Principal:
        token = bearer_token([authorization] if authorization is not None else [])
        try:
            return self.admission.admit(token, SERVICE, "OTLP export", missing=MISSING)
        except Refused as refused:
            raise _Refused(401 if refused.unauthenticated else 403, str(refused)) from None
        except StoreUnavailable:
            raise _Refused(503, "the store is busy or unreachable; retry later", STORE_RETRY_SECONDS) from None


class _Task(WSGITask):
    """Gives the application the connection's callbacks: admitted (no longer counted as
    unauthenticated) and close (after this answer)."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[_ADMITTED] = self.channel.admitted
        environ[_CLOSE] = self._close_after
        return environ

    def _close_after(self) -> None:
        self.request.headers["CONNECTION"] = "close"  # read when the answer's headers are built


class _ErrorTask(ErrorTask):
    """A refusal waitress makes itself (malformed request, headers or body over its limits),
    as a `google.rpc.Status` like every other refusal."""

    def execute(self) -> None:
        error = self.request.error
        limit = self.channel.server.max_body
        message = (f"the body is over the limit of {limit} bytes" if error.code == 413
                   else f"{error.reason}: {error.body}")
        body = _status_body(error.code, message, _kind(self.request.headers.get("CONTENT_TYPE")))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", _kind(self.request.headers.get("CONTENT_TYPE"))))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One connection: its deadline clock, whether it authenticated, and TLS when configured."""

    task_class = _Task
    error_task_class = _ErrorTask
    server: _Server

    def __init__(self, server: _Server, sock: socket.socket, addr: Any, adj: Adjustments,
                 map: dict[int, Any] | None = None) -> None:
        #: monotonic time since which the server waits for this connection's next request.
        self.waiting_since = time.monotonic()
        self.authenticated = False
        self.peer = str(addr[0])
        self._handshaking = isinstance(sock, ssl.SSLSocket)
        self._handshake_wants_write = False
        super().__init__(server, sock, addr, adj, map)

    # -- the deadline and the per-peer count ---------------------------------------------------

    def overdue(self, now: float) -> bool:
        """Past the whole-request deadline: waiting for a request (none being served) too long."""
        return not self.requests and now - self.waiting_since > REQUEST_SECONDS

    def admitted(self) -> None:
        """A request on this connection carried an admitted token (called from a worker thread)."""
        self.server.authenticated(self)

    def service(self) -> None:
        super().service()
        self.waiting_since = time.monotonic()  # the answer is out: the clock starts for the next

    def del_channel(self, map: dict[int, Any] | None = None) -> None:
        self.server.authenticated(self)  # closed: no longer counted either way
        super().del_channel(map)

    # -- TLS: the handshake and reads driven by the loop without blocking -----------------------

    def readable(self) -> bool:
        return True if self._handshaking else bool(super().readable())

    def writable(self) -> bool:
        if self._handshaking:
            return self._handshake_wants_write or self.will_close
        return bool(super().writable())

    def handle_read(self) -> None:
        if self._handshaking:
            self._handshake()
        elif isinstance(self.socket, ssl.SSLSocket):
            self._read_tls()
        else:
            super().handle_read()

    def handle_write(self) -> None:
        if self._handshaking and self.will_close:  # past the deadline mid-handshake
            self.handle_close()
        elif self._handshaking:
            self._handshake()
        else:
            super().handle_write()

    def _handshake(self) -> None:
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants_write = False
            return
        except ssl.SSLWantWriteError:
            self._handshake_wants_write = True
            return
        except OSError as exc:  # ssl.SSLError included: no certificate, wrong protocol, reset
            _log.debug("OTLP/HTTP TLS handshake failed: %s", type(exc).__name__)
            self.handle_close()
            return
        self._handshaking = False
        self._read_tls()  # the client's first request may have come with its last handshake record

    def _read_tls(self) -> None:
        """Everything decrypted so far: the TLS layer may hold data the socket no longer signals."""
        while True:
            try:
                data = self.socket.recv(self.adj.recv_bytes)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:  # a TLS alert or close_notify, a reset
                self.handle_close()
                return
            if not data:
                self.handle_close()
                return
            self.last_activity = time.time()
            self.received(data)
            if not self.socket.pending():
                return

    def send(self, data: bytes, do_close: bool = True) -> int:
        if not isinstance(self.socket, ssl.SSLSocket):
            return int(super().send(data, do_close=do_close))
        if threading.current_thread() is not self.server.loop_thread:
            return 0  # one TLS connection is never used by two threads at once: the loop writes it
        try:
            return int(self.socket.send(data))
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except OSError:
            if do_close:
                self.handle_close()
            return 0


class _Server(TcpWSGIServer):
    """waitress's TCP server with the caps at accept and the deadline in its maintenance pass."""

    channel_class = _Channel

    def __init__(self, app: OtlpExportApp, sockinfo: tuple[Any, ...], adj: Adjustments,
                 map: dict[int, Any], tls: ssl.SSLContext | None) -> None:
        self._tls = tls
        self.max_body = app.max_body
        #: The thread running the loop: the only one that reads or writes a TLS connection.
        self.loop_thread: threading.Thread | None = None
        self._unauthenticated: Counter[str] = Counter()
        self._count_lock = threading.Lock()  # accept and close run in the loop, admission in workers
        super().__init__(app, map=map, adj=adj, sockinfo=sockinfo)

    def run(self) -> None:
        self.loop_thread = threading.current_thread()
        super().run()

    def handle_accept(self) -> None:
        try:
            pair = self.accept()
            if pair is None:
                return
            conn, addr = pair
            self.set_socket_options(conn)
        except OSError:
            return
        peer = str(addr[0])
        with self._count_lock:
            admitted = (len(self.active_channels) < MAX_CONNECTIONS
                        and self._unauthenticated[peer] < MAX_UNAUTHENTICATED_PER_PEER)
            if admitted:
                self._unauthenticated[peer] += 1
        if not admitted:
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(_BUSY)  # plaintext even on a TLS port: the client sees a closed connection
            conn.close()
            return
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            self.channel_class(self, conn, addr, self.adj, map=self._map)
        except OSError:
            with self._count_lock:
                self._forget(peer)
            conn.close()

    def authenticated(self, channel: _Channel) -> None:
        """`channel` no longer counts as unauthenticated (admitted, or closed); once."""
        with self._count_lock:
            if not channel.authenticated:
                channel.authenticated = True
                self._forget(channel.peer)

    def _forget(self, peer: str) -> None:
        self._unauthenticated[peer] -= 1
        if self._unauthenticated[peer] <= 0:
            del self._unauthenticated[peer]

    def maintenance(self, now: float) -> None:
        """waitress's idle cut, then the whole-request deadline (every `cleanup_interval`)."""
        super().maintenance(now)
        mono = time.monotonic()
        for channel in list(self.active_channels.values()):
            if channel.overdue(mono):
                channel.will_close = True  # the loop closes it at its next pass


class OtlpHttpServer:
    """`POST /v1/metrics` on its own address, served by waitress in background threads."""

    def __init__(self, listen: str, otlp: OtlpIngestor, admission: Admission, limiter: RateLimiter,
                 max_body: int, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sockaddr = (host, int(port), 0, 0) if family == socket.AF_INET6 else (host, int(port))
        #: The WSGI application (its `limiter` is the one shared with gRPC).
        self.app = OtlpExportApp(otlp, admission, limiter, max_body)
        # recv_bytes: one read takes what the socket holds (waitress's 8 KiB would need ~90 reads,
        # each waiting for the GIL behind the exports, for a 5,000-point body).
        adj = Adjustments(threads=THREADS, ident="chorus-otlp", asyncore_use_poll=True, recv_bytes=RECV_BYTES,
                          max_request_body_size=max_body + 1,  # waitress refuses a body of this size
                          channel_timeout=int(REQUEST_SECONDS), cleanup_interval=1,
                          connection_limit=MAX_CONNECTIONS + 16,  # ours refuses first, at accept
                          expose_tracebacks=False, clear_untrusted_proxy_headers=False,
                          # A client that resets its connection is no server error: logged, a
                          # traceback each, it would let any peer flood the log.
                          log_socket_errors=False)
        self._map: dict[int, Any] = {}
        self._server = _Server(self.app, (family, socket.SOCK_STREAM, 0, sockaddr), adj, self._map, tls)
        self.port: int = int(self._server.effective_port)
        self.address = f"{listen.rpartition(':')[0]}:{self.port}"
        self._thread = threading.Thread(target=self._server.run, name="chorus-otlp-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the exports in flight (up to 5 s), then close every connection and the port."""
        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._map)  # an empty map ends waitress's loop within its 1 s poll
        if self._thread.is_alive():
            self._thread.join(timeout=5)
