"""What every client-side command shares: server address, token, TLS, errors and exit codes.

Exit codes are one table (`ExitCode`, `STATUS_EXIT`): a script can tell "fix your token" from
"retry later" from "the server said no" without parsing messages (docs/cli.md).

The CLI's token comes from `--token-file`, `CHORUS_TOKEN_FILE` or `--token`, never from
`CHORUS_TOKEN`: that variable is the SDK's (an ingest token in a tool's environment), and
reading it here sent ingest tokens to admin commands. Errors about a token name its source.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.markup import escape

from chorus.server.domain.tokens import TOKEN_PREFIX
from chorus.server.front import client_channel
from chorus.server.front.client_channel import is_loopback
from chorus.server.model.config import DEFAULT_LISTEN

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

DEFAULT_SERVER = DEFAULT_LISTEN
TOKEN_FILE_ENV = "CHORUS_TOKEN_FILE"
SDK_TOKEN_ENV = "CHORUS_TOKEN"


class ExitCode(enum.IntEnum):
    """What `chorus` exits with (documented in docs/cli.md)."""

    OK = 0
    ERROR = 1  # anything not below: an internal server error, a ledger that did not verify
    USAGE = 2  # bad flags, arguments or input files, or a request the server refused as invalid
    UNAUTHENTICATED = 3  # no token, a token file without a token, an unknown or revoked token
    PERMISSION_DENIED = 4  # the token's role may not call this
    NOT_FOUND = 5  # no such token, window or metric
    ALREADY_EXISTS = 6  # e.g. a token name used before
    FAILED_PRECONDITION = 7  # not in this state: a window still open or past retention, none closed yet
    RESOURCE_EXHAUSTED = 8  # the privacy budget would be overspent
    UNAVAILABLE = 9  # the server or its store cannot be reached, or did not answer in time: retry


#: gRPC status -> exit code; every status not listed is ExitCode.ERROR.
STATUS_EXIT: dict[grpc.StatusCode, ExitCode] = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.USAGE,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
}

ServerOpt = Annotated[str, typer.Option("--server", "-s", envvar="CHORUS_SERVER",
                                        help="Chorus gRPC address host:port.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", show_default=False,
    help="Bearer token (better: --token-file or CHORUS_TOKEN_FILE; a flag shows in shell history and ps).")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", show_default=False,
    help=f"File holding the bearer token. Default: ${TOKEN_FILE_ENV}. The SDK's CHORUS_TOKEN is not read.")]
CaOpt = Annotated[Path | None, typer.Option(
    "--ca", envvar="CHORUS_CA_FILE",
    help="CA bundle (PEM) to verify the server. Default: plaintext to a loopback address, TLS "
         "with the system's trusted CAs to any other.")]
CertOpt = Annotated[Path | None, typer.Option("--client-cert", envvar="CHORUS_CLIENT_CERT",
                                              help="Client certificate (PEM) for mTLS.")]
KeyOpt = Annotated[Path | None, typer.Option("--client-key", envvar="CHORUS_CLIENT_KEY",
                                             help="Client private key (PEM) for mTLS.")]

# What gRPC accepts in a header value, and what every token the server issues consists of;
# or an access token of the server's identity provider (a compact JWT, `chorus login --oidc`).
_TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"[\x21-\x7e]+|[\w-]+\.[\w-]+\.[\w-]+", re.ASCII)


def fail(message: str, code: int = ExitCode.ERROR) -> typer.Exit:
    """Print `message` as an error (escaped: "[server]" in it is text, not console markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(int(code))


@dataclass(frozen=True, slots=True)
class Credential:
    """A bearer token and where it came from (named in errors; the secret never is)."""

    secret: str
    source: str


def read_token(token: str | None, token_file: Path | None) -> Credential:
    """The token from --token, --token-file or $CHORUS_TOKEN_FILE, in that order."""
    if token:
        return _checked(token.strip(), "--token")
    source = f"--token-file {token_file}"
    if token_file is None and (env := os.environ.get(TOKEN_FILE_ENV)):
        token_file, source = Path(env), f"{TOKEN_FILE_ENV}={env}"
    if token_file is None:
        hint = (f" ({SDK_TOKEN_ENV} is set, but it is the SDK's variable and the CLI does not read it)"
                if os.environ.get(SDK_TOKEN_ENV) else "")
        raise fail(f"no token: pass --token-file FILE or set {TOKEN_FILE_ENV}{hint}; the first start of a "
                   "server writes an admin token to DATA_DIR/admin.token", ExitCode.UNAUTHENTICATED)
    try:
        secret = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise fail(f"cannot read the token file ({source}): {exc.strerror}", ExitCode.UNAUTHENTICATED) from None
    except UnicodeDecodeError:
        secret = "\0"  # binary: not a token (and not empty)
    return _checked(secret, source)


def _checked(secret: str, source: str) -> Credential:
    """Refuse what is not a token before gRPC sees it: it would fail with "Illegal header value"."""
    if not _TOKEN_SHAPE.fullmatch(secret):
        # Never echo the content: it may be a roster row or someone else's secret.
        what = "is empty" if not secret else f"does not hold a token (one line starting with {TOKEN_PREFIX})"
        raise fail(f"the token from {source} {what}; `chorus token create` writes one with --out FILE",
                   ExitCode.UNAUTHENTICATED)
    return Credential(secret, source)


def create_private_file(path: Path, *, overwrite: bool = False) -> int:
    """Open `path` for writing with mode 0600 (also when replacing a file); a file descriptor.

    Without `overwrite` an existing file is an error, so a secret is never silently replaced.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise fail(f"{path} already exists; remove it or choose another path", ExitCode.USAGE) from None
    except OSError as exc:
        raise fail(f"cannot create {path}: {exc.strerror}", ExitCode.USAGE) from None
    os.fchmod(fd, 0o600)  # os.open's mode applies only to a file it creates
    return fd


def channel_credentials(server: str, ca: Path | None, client_cert: Path | None,
                        client_key: Path | None) -> grpc.ChannelCredentials | None:
    """`client_channel.channel_credentials`, its refusals a usage error (exit 2)."""
    try:
        return client_channel.channel_credentials(server, ca, client_cert, client_key)
    except client_channel.ChannelError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


class Connection:
    """A channel plus the bearer token as call metadata."""

    def __init__(self, server: str, credential: Credential, ca: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None) -> None:
        creds = channel_credentials(server, ca, client_cert, client_key)
        self.channel = grpc.secure_channel(server, creds) if creds else grpc.insecure_channel(server)
        self.metadata = (("authorization", f"Bearer {credential.secret}"),)
        self.server = server
        self.token_source = credential.source

    def call(self, method: Callable[..., T], request: object, timeout: float = 60.0) -> T:
        """Invoke a stub method; gRPC errors become a clear message and their exit code."""
        with rpc_errors(self.server, self.token_source):
            return method(request, metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def exit_code(status: grpc.StatusCode | None) -> ExitCode:
    return STATUS_EXIT.get(status, ExitCode.ERROR) if status is not None else ExitCode.ERROR


@contextmanager
def rpc_errors(server: str, token_source: str = "") -> Iterator[None]:
    """gRPC errors become one line on stderr and the status's exit code."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            raise fail(f"cannot reach Chorus at {server}: {details}{_unavailable_hint(server, details)}",
                       ExitCode.UNAVAILABLE) from None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) and token_source:
            details = f"{details} (token from {token_source})"
        raise fail(f"{code.name if code else 'error'}: {details}", exit_code(code)) from None


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


