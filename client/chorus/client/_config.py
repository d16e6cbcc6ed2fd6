"""Client configuration: explicit arguments first, then CHORUS_* environment variables.

Validation raises ConfigError with a message that never contains the token or a user
id; the Client turns it into one logged warning and a no-op client.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import grpc

from chorus.client._transport import GrpcTransport
from chorus.client.limits import MAX_NAME_CHARS

__all__ = ["MAX_NAME_CHARS", "ConfigError", "PemSource", "Settings", "grpc_transport", "is_loopback",
           "resolve_settings", "valid_name"]

ENV_ENDPOINT = "CHORUS_ENDPOINT"
ENV_TOKEN = "CHORUS_TOKEN"
ENV_USER = "CHORUS_USER"
ENV_SPOOL_DIR = "CHORUS_SPOOL_DIR"
ENV_CA_FILE = "CHORUS_CA_FILE"


PemSource = bytes | str | os.PathLike[str]


class ConfigError(ValueError):
    """The client cannot be configured; the message is safe to log."""


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one Client."""

    source: str
    source_version: str
    user: str | None
    flush_interval: float
    max_pending: int
    timeout: float
    spool_dir: Path | None


def valid_name(value: object) -> TypeGuard[str]:
    """Whether `value` can be a user id or metric name."""
    return type(value) is str and 0 < len(value) <= MAX_NAME_CHARS


def resolve_settings(
    *,
    source: object,
    source_version: object,
    user: object,
    flush_interval: object,
    max_pending: object,
    timeout: object,
    spool_dir: object,
) -> Settings:
    """Validate the non-transport options, filling user and spool_dir from the environment."""
    if not valid_name(source) or not (valid_name(source_version) or source_version == ""):
        raise ConfigError(f"source and source_version must be strings of at most {MAX_NAME_CHARS} characters")
    user = user if user is not None else os.environ.get(ENV_USER) or None
    if user is not None and not valid_name(user):
        raise ConfigError(f"user must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    spool = spool_dir if spool_dir is not None else os.environ.get(ENV_SPOOL_DIR) or None
    if spool is not None and not isinstance(spool, str | os.PathLike):
        raise ConfigError("spool_dir must be a path")
    spool_path = _path(spool) if spool is not None else None
    if spool_path is not None and spool_path.exists() and not spool_path.is_dir():
        raise ConfigError(f"spool_dir {spool_path} is a file, not a directory: name a directory (created if "
                          "missing) for the batches kept across restarts")
    return Settings(
        source=source,
        source_version=source_version,
        user=user,
        flush_interval=_positive_seconds("flush_interval", flush_interval),
        max_pending=_positive_int("max_pending", max_pending),
        timeout=_positive_seconds("timeout", timeout),
        spool_dir=spool_path,
    )


logger = logging.getLogger("chorus.client")

#: How every token the Chorus server issues starts.
TOKEN_PREFIX = "chorus_"


def grpc_transport(
    *,
    endpoint: str | None,
    token: str | None,
    root_certificates: PemSource | None,
    client_certificate: PemSource | None,
    client_key: PemSource | None,
    secure: bool | None,
) -> GrpcTransport:
    """The real transport for the given (or environment) endpoint, token and TLS material."""
    endpoint = endpoint or os.environ.get(ENV_ENDPOINT)
    token = token or os.environ.get(ENV_TOKEN)
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigError(f"no endpoint: pass endpoint= or set {ENV_ENDPOINT}")
    if not isinstance(token, str) or not token or token != token.strip() or not token.isprintable():
        raise ConfigError(f"missing or malformed token: pass token= or set {ENV_TOKEN}")
    if not token.startswith(TOKEN_PREFIX):
        # Not refused (the server decides), but said at once: a Chorus token starts "chorus_", and
        # an API key or a file's other line sent instead would only fail later, as UNAUTHENTICATED.
        logger.warning("the token does not look like a Chorus ingest token (they start with %r): "
                       "the server will refuse it; create one with `chorus token create --role ingest`",
                       TOKEN_PREFIX)
    if root_certificates is None and os.environ.get(ENV_CA_FILE):
        root_certificates = os.environ[ENV_CA_FILE]
    if (client_certificate is None) != (client_key is None):
        raise ConfigError("client_certificate and client_key must be given together")
    has_tls_material = root_certificates is not None or client_certificate is not None
    if secure is None:
        secure = has_tls_material or not is_loopback(endpoint)
    elif not secure and has_tls_material:
        raise ConfigError("secure=False contradicts the certificates given")
    credentials = None
    if secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem("root_certificates", root_certificates),
            private_key=_pem("client_key", client_key),
            certificate_chain=_pem("client_certificate", client_certificate),
        )
    return GrpcTransport(endpoint.strip(), token, credentials)


def is_loopback(target: str) -> bool:
    """Whether a gRPC target names this machine (where plaintext is acceptable)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    rest = target.strip()
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        rest = rest.removeprefix(scheme)
    rest = rest.split(",")[0]
    if rest.startswith("["):
        host = rest[1 : rest.find("]")]
    elif rest.count(":") == 1:
        host = rest.partition(":")[0]
    else:
        host = rest
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pem(name: str, source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"{name} must be PEM bytes or a path to a PEM file")
    try:
        return _path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {name} file: {exc.strerror}") from None


def _path(value: str | os.PathLike[str]) -> Path:
    """A path given by the host or the environment, with a leading `~` or `~user` expanded.

    Without the expansion, `spool_dir="~/.cache/tool"` would create a directory literally
    named `~` in the working directory. A `~` that cannot be expanded (no home directory
    known) is left as is, like the shell does.
    """
    path = Path(value)
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive number of seconds")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"{name} must be a positive integer")
    return value
