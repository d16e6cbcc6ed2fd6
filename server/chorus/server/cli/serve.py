"""`chorus serve`: run the server until SIGTERM or SIGINT.

Once the log setup is done, every line the server writes goes through it (`_say`, `_refuse`):
with `--log-format json` each line on either stream is one JSON object, the ready line
("chorus serving on ADDRESS ...") and the first start's admin token line included, so
`journalctl -u chorus | jq .` reads all of it. Those announcements are logged at INFO by
their own logger, which keeps INFO whatever `--log-level` says (scripts wait for the ready line).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chorus.server.cli._common import ExitCode, console, fail, is_loopback
from chorus.server.model import config as config_module
from chorus.server.root import Chorus
from chorus.server.store import StoreUnavailable
from chorus.server.transport import logs, metrics, readiness, signals, worker_metrics, workers
from chorus.server.transport.grpc_server import Server, TlsConfig

#: The environment variables of `chorus serve`'s flags (docs/deployment.md, "Settings: flags,
#: environment, config file"). Workers get every setting on their command line, so these are
#: not passed on to them, except the database URL (kept out of `ps`).
SERVE_ENVIRONMENT = ("CHORUS_CONFIG", "CHORUS_DATA_DIR", "CHORUS_LISTEN", "CHORUS_DATABASE", "CHORUS_TLS_CERT",
                     "CHORUS_TLS_KEY", "CHORUS_CLIENT_CA", "CHORUS_INSECURE", "CHORUS_OTLP_HTTP_LISTEN",
                     "CHORUS_LOG_LEVEL", "CHORUS_LOG_FORMAT", "CHORUS_METRICS_LISTEN", "CHORUS_WORKERS")

#: The server's own announcements (ready line, listeners, first start): always at INFO.
_announce = logging.getLogger("chorus.server.serve")
_announce.setLevel(logging.INFO)


def _say(message: str) -> None:
    _announce.info(message)


def _refuse(message: str, code: int = ExitCode.ERROR) -> typer.Exit:
    """A refusal after the log setup: a log record (JSON with --log-format json), then the exit."""
    if _json_logs():
        _announce.error("error: %s", message)
        return typer.Exit(int(code))
    return fail(message, code)


def _json_logs() -> bool:
    return any(isinstance(h.formatter, logs.JsonFormatter) for h in logging.getLogger().handlers)


DataDirOpt = Annotated[Path, typer.Option("--data-dir", "-d", envvar="CHORUS_DATA_DIR",
                                          help="Directory for the SQLite database, ledger key, admin token.")]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _refuse(f"cannot read {what} {path}: {exc.strerror}", 2) from None


def load_tls(cert: Path, key: Path, client_ca: Path | None) -> TlsConfig:
    """Read and check the TLS files up front: gRPC would only fail at the first handshake."""
    chain_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise _refuse(f"--tls-cert {cert}: not a PEM certificate chain", 2) from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise _refuse(f"--tls-key {key}: not an unencrypted PEM private key", 2) from None
    if private_key.public_key() != chain[0].public_key():
        raise _refuse(f"--tls-key {key} does not belong to the first certificate in --tls-cert {cert}", 2)
    if key.stat().st_mode & 0o077:
        _announce.warning("%s is readable by group or others; chmod 600 it", key)
    ca_pem = None
    if client_ca is not None:
        ca_pem = _read(client_ca, "--client-ca")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise _refuse(f"--client-ca {client_ca}: not a PEM certificate bundle", 2) from None
    return TlsConfig(chain_pem, key_pem, ca_pem)


def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="CHORUS_CONFIG",
                                                help="TOML config; default: built-in policy.")] = None,
    data_dir: DataDirOpt = Path("chorus-data"),
    listen: Annotated[str | None, typer.Option("--listen", "-l", envvar="CHORUS_LISTEN",
                                               help="host:port (port 0: any free port).")] = None,
    database: Annotated[str | None, typer.Option(
        "--database", envvar="CHORUS_DATABASE",
        help="postgresql://... to share one PostgreSQL between replicas; default SQLite.")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", envvar="CHORUS_TLS_CERT",
                                                  help="Server certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", envvar="CHORUS_TLS_KEY",
                                                 help="Server private key (PEM).")] = None,
    client_ca: Annotated[Path | None, typer.Option("--client-ca", envvar="CHORUS_CLIENT_CA",
                                                   help="Require client certificates signed by this CA "
                                                   "(mTLS).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", envvar="CHORUS_INSECURE",
                                           help="Allow plaintext on a non-loopback address.")] = False,
    otlp_http_listen: Annotated[str | None, typer.Option(
        "--otlp-http-listen", envvar="CHORUS_OTLP_HTTP_LISTEN",
        help="host:port for OTLP/HTTP (POST /v1/metrics), off by default; OTLP/gRPC is "
        "always on --listen. Same TLS options.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", envvar="CHORUS_LOG_LEVEL",
                                           help="DEBUG, INFO, WARNING or ERROR. No level "
                                           "logs user ids, tokens or per-person values.")] = "INFO",
    log_format: Annotated[str, typer.Option("--log-format", envvar="CHORUS_LOG_FORMAT",
                                            help="text (one line per record) or json "
                                            "(one JSON object per line, with a request id per RPC).")] = "text",
    metrics_listen: Annotated[str | None, typer.Option(
        "--metrics-listen", envvar="CHORUS_METRICS_LISTEN",
        help="host:port to serve Prometheus metrics on (GET /metrics, no "
        "authentication: keep it on loopback or a monitoring network); default: off. With "
        "--workers N still one target: every worker's series, labelled worker.")] = None,
    worker_count: Annotated[str, typer.Option(
        "--workers", envvar="CHORUS_WORKERS",
        help="Server processes sharing the port and the store: a number, or auto (one per "
        "core). One of them runs the window closer.")] = "1",
    worker_index: Annotated[int | None, typer.Option("--worker-index", hidden=True)] = None,
    ready_fd: Annotated[int | None, typer.Option("--ready-fd", hidden=True)] = None,
) -> None:
    """Run the Chorus server."""
    try:
        logs.configure(log_level, log_format)
    except ValueError as exc:
        raise fail(f"--log-level/--log-format: {exc}", 2) from None
    try:
        count = workers.parse_count(worker_count)
    except ValueError as exc:
        raise _refuse(str(exc), 2) from None
    try:
        cfg = config_module.load(config)
    except config_module.ConfigError as exc:
        raise _refuse(str(exc), 2) from None
    address = listen or cfg.listen
    for flag, value, example in (("--listen", address, "127.0.0.1:7355"),
                                 ("--metrics-listen", metrics_listen, "127.0.0.1:9464"),
                                 ("--otlp-http-listen", otlp_http_listen, "127.0.0.1:4318")):
        if value is not None:
            try:
                metrics.parse_address(value, flag, example)
            except ValueError as exc:
                raise _refuse(str(exc), 2) from None
    if (tls_cert is None) != (tls_key is None):
        raise _refuse("--tls-cert and --tls-key go together", 2)
    if client_ca is not None and tls_cert is None:
        raise _refuse("--client-ca (mTLS) needs --tls-cert and --tls-key", 2)
    if tls_cert is None and not insecure and not is_loopback(address):
        raise _refuse(f"refusing plaintext on non-loopback address {address}: give --tls-cert/--tls-key, "
                   "or --insecure if a trusted proxy terminates TLS", 2)
    if (otlp_http_listen is not None and tls_cert is None and not insecure
            and not is_loopback(otlp_http_listen)):
        raise _refuse(f"refusing plaintext OTLP/HTTP on non-loopback address {otlp_http_listen}: give "
                   "--tls-cert/--tls-key, or --insecure if a trusted proxy terminates TLS", 2)
    tls = load_tls(tls_cert, tls_key, client_ca) if tls_cert and tls_key else None
    if worker_index is not None:
        _serve_worker(Chorus(cfg, data_dir, database=database), address, tls, metrics_listen, otlp_http_listen,
                      worker_index, ready_fd)
        return
    _check_port_free(address)
    chorus, token_path = _open(cfg, data_dir, database)
    if count > 1:
        chorus.close()  # migrations, signing key, config record and admin token exist now: once
        argv = ["--data-dir", str(data_dir), "--log-level", log_level, "--log-format", log_format,
                *(["--config", str(config)] if config else []),
                *(["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)] if tls_cert and tls_key else []),
                *(["--client-ca", str(client_ca)] if client_ca else []), *(["--insecure"] if insecure else [])]
        _supervise(count, address, argv, metrics_listen, otlp_http_listen, token_path, tls is not None, data_dir,
                   database)
        return
    stop = _stop_on_signals()
    try:
        server = Server(chorus, address, tls=tls, metrics_listen=metrics_listen,
                        otlp_http_listen=otlp_http_listen)
    except OSError as exc:
        chorus.close()
        raise _refuse(str(exc)) from None
    server.start()
    if token_path:
        _say(f"First start: an admin token was written to {token_path} (mode 0600).")
    if server.metrics_address:
        _say(f"metrics on http://{server.metrics_address}/metrics")
    if server.otlp_http is not None:
        _say(f"OTLP/HTTP on {'https' if tls else 'http'}://{server.otlp_http.address}/v1/metrics")
    # The ready line: scripts and tests read the bound port from it.
    _say(f"chorus serving on {server.address} ({'TLS' if tls else 'plaintext'}), data in {data_dir}")
    readiness.notify(f"READY=1\nSTATUS=serving on {server.address}")
    server.serve_until(stop)


def _open(cfg: config_module.Config, data_dir: Path, database: str | None) -> tuple[Chorus, Path | None]:
    """The instance over `data_dir` and the first start's admin token path, or one clear line
    (exit 2) when the data directory is not a directory this user can write."""
    if data_dir.exists() and not data_dir.is_dir():
        raise _refuse(f"--data-dir {data_dir} is a file, not a directory: name a directory (it is "
                      "created if missing) for the database, the ledger key and the admin token", 2)
    chorus = None
    try:
        chorus = Chorus(cfg, data_dir, database=database)
        return chorus, chorus.bootstrap_admin_token()
    except (OSError, StoreUnavailable) as exc:
        if chorus is not None:
            chorus.close()
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _refuse(f"cannot use the data directory {data_dir} ({reason}); it must be a directory this user "
                      "can write (--data-dir or CHORUS_DATA_DIR)", 2) from None


def _serve_worker(chorus: Chorus, address: str, tls: TlsConfig | None, metrics_listen: str | None,
                  otlp_http_listen: str | None, index: int, ready_fd: int | None) -> None:
    """One worker of `serve --workers N` (chorus.server.transport.workers): its parent holds the port.
    Worker 0 alone is given `otlp_http_listen` (and runs the closer)."""
    stop = _stop_on_signals()
    try:
        server = Server(chorus, address, tls=tls, metrics_listen=metrics_listen,
                        otlp_http_listen=otlp_http_listen, share_port=True, run_closer=index == 0)
    except OSError as exc:
        chorus.close()
        raise _refuse(f"worker {index}: {exc}") from None
    server.start()
    if server.otlp_http is not None:
        _say(f"worker {index}: OTLP/HTTP on {'https' if tls else 'http'}://{server.otlp_http.address}/v1/metrics")
    sys.stderr.flush()  # the metrics line before the parent's ready line, also into a file
    workers.signal_ready(ready_fd, metrics.parse_address(server.metrics_address)[1] if server.metrics_address
                         else None)
    workers.watch_parent(stop.set)
    server.serve_until(stop)


def _stop_on_signals() -> signals.StopEvent:
    """Set by SIGTERM or SIGINT from here on, before anything listens: one that comes while the
    server starts stops it once it serves, gracefully (before this, the default action ends the
    process at once; nothing was bound or acknowledged yet). transport/signals.py says why this
    is no `threading.Event`."""
    stop = signals.StopEvent()
    signals.stop_on_signals(stop)
    return stop


def _supervise(count: int, address: str, argv: list[str], metrics_listen: str | None,
               otlp_http_listen: str | None, token_path: Path | None, tls: bool, data_dir: Path,
               database: str | None) -> None:
    """The parent of `serve --workers N`: reserve the port, start the workers, restart the ones that
    die, stop them all on SIGTERM or SIGINT. OTLP/HTTP is served by worker 0 alone (OTLP/gRPC
    shares the gRPC port like every other service)."""
    try:
        reservation, address = workers.reserve_port(address)
    except OSError as exc:
        raise _refuse(f"cannot listen on {address}: {exc.strerror}", ExitCode.UNAVAILABLE) from None

    def command(index: int, fd: int) -> list[str]:
        return [sys.executable, "-m", "chorus.server.cli", "serve", *argv, "--listen", address,
                *(["--metrics-listen", worker_metrics.WORKER_LISTEN] if metrics_listen else []),
                *(["--otlp-http-listen", otlp_http_listen] if otlp_http_listen and index == 0 else []),
                "--worker-index", str(index), "--ready-fd", str(fd)]

    # Everything on the command line but the database URL (a password stays out of `ps`);
    # no NOTIFY_SOCKET: the parent alone tells systemd.
    env = {name: value for name, value in os.environ.items()
           if name not in SERVE_ENVIRONMENT and name != "NOTIFY_SOCKET"}
    if database is not None:
        env["CHORUS_DATABASE"] = database
    supervisor = workers.Supervisor(command, count, _stop_on_signals(), env)
    scrape = None
    if metrics_listen is not None:  # the one target, bound before any worker starts
        try:
            scrape, bound = metrics.serve_registry(worker_metrics.registry_of(supervisor.metrics_targets),
                                                   metrics_listen)
        except OSError as exc:
            for sock in reservation:
                sock.close()
            raise fail(str(exc)) from None
    try:
        try:
            supervisor.start()
        except workers.WorkerFailed as exc:
            raise _refuse(str(exc)) from None
        if token_path:
            _say(f"First start: an admin token was written to {token_path} (mode 0600).")
        if scrape is not None:
            _say(f"metrics on http://{bound}/metrics ({count} workers)")
        _say(f"chorus serving on {address} ({'TLS' if tls else 'plaintext'}), data in {data_dir}, "
             f"{count} workers (pids {' '.join(map(str, supervisor.pids))})")
        readiness.notify(f"READY=1\nSTATUS=serving on {address}, {count} workers")
        supervisor.run()
        supervisor.stop()
    finally:
        if scrape is not None:
            metrics.stop_serving(scrape)
        for sock in reservation:
            sock.close()


def _check_port_free(address: str) -> None:
    """Fail with one clear line, before the data directory is touched, if `address` is taken.

    gRPC would find out too, but it first prints a core log line (add_port.cc) to stderr.
    A name that does not resolve is left to gRPC's own error.
    """
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (ValueError, OSError):
        return
    if int(port) == 0:
        return
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no conflict
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise _refuse(f"cannot listen on {address}: {exc.strerror}. Is another server (or `chorus serve`) "
                           "using it? Choose another --listen", ExitCode.UNAVAILABLE) from None


def default_config(
    otlp: Annotated[bool, typer.Option("--otlp", help="With the [otlp] mappings for Claude Code, Gemini CLI "
                                       "and the GenAI conventions uncommented.")] = False,
) -> None:
    """Print the built-in configuration (a starting point for --config), with the intervals its
    release plan gives teams of 10, 30 and 100 people."""
    from chorus.server.model.plan_intervals import explain

    text = config_module.DEFAULT_TOML
    # The plan's intervals right after the plan, before the metrics it names.
    at = text.index(config_module.METRICS_COMMENT)
    text = text[:at] + explain(config_module.load(None).policy) + "\n" + text[at:]
    print(config_module.with_otlp_enabled(text) if otlp else text, end="")


config_app = typer.Typer(help="Check a configuration file.", no_args_is_help=True)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="TOML config, as given to serve --config.")]) -> None:
    """Validate a config file exactly as `chorus serve --config` does, without starting anything:
    every key known (an unknown one is named with the nearest valid one), every value in range."""
    try:
        policy = config_module.load(file).policy
    except config_module.ConfigError as exc:
        raise fail(str(exc), 2) from None
    grace = policy.grace_seconds
    grace_text = f"{grace // 3600} h" if grace % 3600 == 0 else f"{grace} s"
    windows = "daily" if policy.window_length.value == "day" else "weekly"
    console.print(f"{file}: valid ({windows} windows, {grace_text} grace, {policy.mechanism}, "
                  f"{policy.unit.UNIT} {policy.budget_per_window} per team-window, k = {policy.min_team_size}, "
                  f"{len(policy.metrics)} metrics)", highlight=False, soft_wrap=True, markup=False)
