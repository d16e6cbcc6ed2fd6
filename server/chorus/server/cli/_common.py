"""What every client-side command shares: server address, token, TLS, and error display."""

from __future__ import annotations

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
CaOpt = Annotated[Path | None, typer.Option("--ca", envvar="CHORUS_CA_FILE",
                                            help="CA bundle (PEM) to verify the server: enables TLS.")]
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
            return token_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read token file {token_file}: {exc.strerror}") from None
    raise fail("no token: pass --token-file, or set CHORUS_TOKEN (the first start of a server "
               "writes an admin token to DATA_DIR/admin.token)")


class Connection:
    """A channel plus the bearer token as call metadata."""

    def __init__(self, server: str, token: str, ca: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None) -> None:
        if ca is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes(),
                private_key=client_key.read_bytes() if client_key else None,
                certificate_chain=client_cert.read_bytes() if client_cert else None)
            self.channel = grpc.secure_channel(server, creds)
        else:
            self.channel = grpc.insecure_channel(server)
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
            raise fail(f"cannot reach Chorus at {server}: {details}") from None
        raise fail(f"{code.name if code else 'error'}: {details}") from None


@contextmanager
def connect(server: str, token: str | None, token_file: Path | None, ca: Path | None = None,
            client_cert: Path | None = None, client_key: Path | None = None) -> Iterator[Connection]:
    conn = Connection(server, read_token(token, token_file), ca, client_cert, client_key)
    try:
        yield conn
    finally:
        conn.close()


