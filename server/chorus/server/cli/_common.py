"""What every client-side command shares: server address, token, TLS, and error display."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

DEFAULT_SERVER = "127.0.0.1:7355"

ServerOpt = Annotated[str, typer.Option("--server", "-s", envvar="CHORUS_SERVER",
                                        help="Chorus gRPC address host:port.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="CHORUS_TOKEN", show_default=False,
    help="Bearer token (better: set CHORUS_TOKEN or use --token-file; never echoed).")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", envvar="CHORUS_TOKEN_FILE", help="File holding the bearer token.")]
CaOpt = Annotated[Path | None, typer.Option(
    "--ca", envvar="CHORUS_CA_FILE",
    help="CA bundle (PEM) to verify the server. Default: plaintext to a loopback address, TLS "
         "with the system's trusted CAs to any other.")]
CertOpt = Annotated[Path | None, typer.Option("--client-cert", envvar="CHORUS_CLIENT_CERT",
                                              help="Client certificate (PEM) for mTLS.")]
KeyOpt = Annotated[Path | None, typer.Option("--client-key", envvar="CHORUS_CLIENT_KEY",
                                             help="Client private key (PEM) for mTLS.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def read_token(token: str | None, token_file: Path | None) -> str:
    if token:
        return token.strip()
    if token_file:
        try:
            secret = token_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not secret:
            raise fail(f"token file {token_file} is empty")
        return secret
    raise fail("no token: pass --token-file or set CHORUS_TOKEN_FILE (or CHORUS_TOKEN); the first start "
               "of a server writes an admin token to DATA_DIR/admin.token")


def create_private_file(path: Path, *, overwrite: bool = False) -> int:
    """Open `path` for writing with mode 0600 (also when replacing a file); a file descriptor.

    Without `overwrite` an existing file is an error, so a secret is never silently replaced.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise fail(f"{path} already exists; remove it or choose another path") from None
    except OSError as exc:
        raise fail(f"cannot create {path}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)  # os.open's mode applies only to a file it creates
    return fd


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
        raise fail(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(server: str, ca: Path | None, client_cert: Path | None,
                        client_key: Path | None) -> grpc.ChannelCredentials | None:
    """TLS credentials for `server`, or None for plaintext, which only a loopback address gets:
    a bearer token is never sent in the clear across a network."""
    if (client_cert is None) != (client_key is None):
        raise fail("--client-cert and --client-key go together", 2)
    if ca is None and client_cert is None and is_loopback(server):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "CA bundle") if ca else None,  # None: the system's CAs
        private_key=_read_pem(client_key, "client key") if client_key else None,
        certificate_chain=_read_pem(client_cert, "client certificate") if client_cert else None)


class Connection:
    """A channel plus the bearer token as call metadata."""

    def __init__(self, server: str, token: str, ca: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None) -> None:
        creds = channel_credentials(server, ca, client_cert, client_key)
        self.channel = grpc.secure_channel(server, creds) if creds else grpc.insecure_channel(server)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.server = server

    def call(self, method: Callable[..., T], request: object, timeout: float = 60.0) -> T:
        """Invoke a stub method; gRPC errors become a clear message and exit code 1."""
        with rpc_errors(self.server):
            return method(request, metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


@contextmanager
def rpc_errors(server: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            raise fail(f"cannot reach Chorus at {server}: {details}{_unavailable_hint(server, details)}") from None
        raise fail(f"{code.name if code else 'error'}: {details}") from None


def _unavailable_hint(server: str, details: str) -> str:
    """What a person can try, from the shape of gRPC's connection error."""
    lowered = details.lower()
    if "connection refused" in lowered:
        return f". Is `chorus serve` running and listening on {server}? (--server / CHORUS_SERVER)"
    if not is_loopback(server):
        return (". Beyond loopback the CLI always uses TLS: give --ca unless a system-trusted CA signed the "
                "server's certificate, and --client-cert/--client-key if the server requires them (mTLS)")
    if "socket closed" in lowered or "ssl" in lowered or "handshake" in lowered:
        return (". The server may require TLS: give --ca (and --client-cert/--client-key if it requires "
                "client certificates)")
    return ""


@contextmanager
def connect(server: str, token: str | None, token_file: Path | None, ca: Path | None = None,
            client_cert: Path | None = None, client_key: Path | None = None) -> Iterator[Connection]:
    conn = Connection(server, read_token(token, token_file), ca, client_cert, client_key)
    try:
        yield conn
    finally:
        conn.close()


