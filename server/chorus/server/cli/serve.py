"""`chorus serve`: run the server until SIGTERM or SIGINT."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from chorus.server import config as config_module
from chorus.server.app import Server, TlsConfig
from chorus.server.app_context import Chorus
from chorus.server.cli._common import console, fail

DataDirOpt = Annotated[Path, typer.Option("--data-dir", "-d", envvar="CHORUS_DATA_DIR",
                                          help="Directory for the SQLite database, ledger key, admin token.")]


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="CHORUS_CONFIG",
                                                help="TOML config; default: built-in policy.")] = None,
    data_dir: DataDirOpt = Path("chorus-data"),
    listen: Annotated[str | None, typer.Option("--listen", "-l", help="host:port (port 0: any free port).")] = None,
    database: Annotated[str | None, typer.Option(
        "--database", envvar="CHORUS_DATABASE",
        help="postgresql://... to share one PostgreSQL between replicas; default SQLite.")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Server certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Server private key (PEM).")] = None,
    client_ca: Annotated[Path | None, typer.Option("--client-ca", help="Require client certificates "
                                                   "signed by this CA (mTLS).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plaintext on a non-loopback "
                                           "address.")] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the Chorus server."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_module.load(config)
    except config_module.ConfigError as exc:
        raise fail(str(exc), 2) from None
    address = listen or cfg.listen
    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together", 2)
    if client_ca is not None and tls_cert is None:
        raise fail("--client-ca (mTLS) needs --tls-cert and --tls-key", 2)
    if tls_cert is None and not insecure and not is_loopback(address):
        raise fail(f"refusing plaintext on non-loopback address {address}: give --tls-cert/--tls-key, "
                   "or --insecure if a trusted proxy terminates TLS", 2)
    tls = None
    if tls_cert and tls_key:
        tls = TlsConfig(tls_cert.read_bytes(), tls_key.read_bytes(),
                        client_ca.read_bytes() if client_ca else None)
    chorus = Chorus(cfg, data_dir, database=database)
    token_path = chorus.bootstrap_admin_token()
    server = Server(chorus, address, tls=tls)
    server.start()
    if token_path:
        console.print(f"First start: an admin token was written to {token_path} (mode 0600).")
    # The ready line: scripts and tests read the bound port from it.
    console.print(f"chorus serving on {server.address} ({'TLS' if tls else 'plaintext'}), "
                  f"data in {data_dir}", highlight=False, soft_wrap=True)
    server.wait_for_signal()
