"""`chorus dashboard`: the web dashboard, a separate process that reads the gRPC API."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    ExitCode,
    KeyOpt,
    ServerOpt,
    console,
    fail,
    is_loopback,
)
from chorus.server.front.client_channel import ChannelError
from chorus.server.model.config import ConfigError, parse_duration
from chorus.server.model.oidc import check_issuer
from chorus.server.transport import logs, metrics

if TYPE_CHECKING:
    from chorus.server.dashboard.sso import SignOn


def dashboard(
    server: ServerOpt = DEFAULT_SERVER,
    listen: Annotated[str, typer.Option("--listen", "-l", envvar="CHORUS_DASHBOARD_LISTEN",
                                        help="host:port to serve HTTP on (port 0: any free port).")]
    = "127.0.0.1:8080",
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
    trusted_proxy: Annotated[str | None, typer.Option(
        "--trusted-proxy", help="Address of the reverse proxy that terminates HTTPS in front of the "
        "dashboard; its X-Forwarded-Proto is believed, so session cookies are marked Secure.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain HTTP on a non-loopback address "
                                           "without --trusted-proxy (tokens would cross the network in "
                                           "the clear).")] = False,
    session_idle: Annotated[str, typer.Option("--session-idle", help="Sign a browser out after this long "
                                              "without a request, e.g. 30m or 2h.")] = "30m",
    threads: Annotated[int, typer.Option("--threads", min=1, max=256, help="Worker threads.")] = 8,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=0.1, help="Seconds to wait for "
                                                   "the Chorus server at start; the dashboard refuses to start "
                                                   "without it.")] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", envvar="CHORUS_LOG_LEVEL",
                                           help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[str, typer.Option("--log-format", envvar="CHORUS_LOG_FORMAT",
                                            help="text or json (one JSON object per line), as for "
                                            "`chorus serve`.")] = "text",
    metrics_listen: Annotated[str | None, typer.Option(
        "--metrics-listen", envvar="CHORUS_DASHBOARD_METRICS_LISTEN",
        help="host:port to serve the dashboard's Prometheus metrics on (GET /metrics, no authentication: "
        "keep it on loopback or a monitoring network); default: off.")] = None,
    oidc_issuer: Annotated[str | None, typer.Option(
        "--oidc-issuer", envvar="CHORUS_DASHBOARD_OIDC_ISSUER", rich_help_panel="Single sign-on",
        help="OpenID Connect issuer URL: people sign in there (authorization code with PKCE) besides "
        "with tokens; the server's oidc.issuer.")] = None,
    oidc_client_id: Annotated[str | None, typer.Option(
        "--oidc-client-id", envvar="CHORUS_DASHBOARD_OIDC_CLIENT_ID", rich_help_panel="Single sign-on",
        help="The dashboard's client id at the issuer.")] = None,
    oidc_client_secret_file: Annotated[Path | None, typer.Option(
        "--oidc-client-secret-file", envvar="CHORUS_DASHBOARD_OIDC_CLIENT_SECRET_FILE",
        rich_help_panel="Single sign-on", help="File holding the client secret (none: a public client).")] = None,
    oidc_audience: Annotated[str | None, typer.Option(
        "--oidc-audience", envvar="CHORUS_DASHBOARD_OIDC_AUDIENCE", rich_help_panel="Single sign-on",
        help="The server's oidc.audience, asked for as the resource indicator.")] = None,
) -> None:
    """Serve the web dashboard for leadership (analyst tokens) and privacy officers (auditor tokens)."""
    # Imported here so that other commands do not pay for Flask and waitress.
    from chorus.server.dashboard import Gateway, create_app, observability
    from chorus.server.dashboard.wsgi_server import DashboardServer

    try:
        logs.configure(log_level, log_format)
    except ValueError as exc:
        raise fail(f"--log-level/--log-format: {exc}", 2) from None
    if metrics_listen is not None:
        try:
            metrics.parse_address(metrics_listen)
        except ValueError as exc:
            raise fail(str(exc), 2) from None
    if not is_loopback(listen) and not trusted_proxy and not insecure:
        raise fail(f"refusing plain HTTP on non-loopback address {listen}: people type tokens into this "
                   "page. Put an HTTPS proxy in front (--trusted-proxy) or pass --insecure", 2)
    try:
        idle = timedelta(seconds=parse_duration(session_idle, "--session-idle"))
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    sso = _sign_on(oidc_issuer, oidc_client_id, oidc_client_secret_file, oidc_audience)
    try:
        gateway = Gateway(server, ca=ca, client_cert=client_cert, client_key=client_key)
    except ChannelError as exc:
        raise fail(str(exc), 2) from None
    if not gateway.reachable(timeout=connect_timeout):
        gateway.close()
        raise fail(f"the Chorus server at {server} is not reachable (no connection within {connect_timeout:g} s): "
                   "start `chorus serve` first, or pass the right --server", ExitCode.UNAVAILABLE)
    app = create_app(gateway, idle_timeout=idle, sso=sso)
    registry = observability.install(app, gateway).registry
    try:
        web = DashboardServer(app, listen, threads=threads, trusted_proxy=trusted_proxy)
    except ValueError as exc:
        raise fail(f"cannot listen on {listen}: {exc}", 2) from None
    except OSError as exc:  # taken or not available: as `chorus serve`, "retry later may work"
        raise fail(f"cannot listen on {listen}: {exc.strerror or exc}", ExitCode.UNAVAILABLE) from None
    scrape = None
    if metrics_listen is not None:
        try:
            scrape, bound = metrics.serve_registry(registry, metrics_listen)
        except OSError as exc:
            raise fail(str(exc), ExitCode.UNAVAILABLE) from None
        console.print(f"dashboard metrics on http://{bound}/metrics", highlight=False, soft_wrap=True)

    def stop(*_: object) -> NoReturn:
        raise SystemExit(0)  # waitress's loop turns this into a clean shutdown

    signal.signal(signal.SIGTERM, stop)
    # The ready line: scripts and tests read the bound address from it.
    console.print(f"chorus dashboard on {web.url} reading Chorus at {server} "
                  f"({'TLS' if gateway.tls else 'plaintext'})", highlight=False, soft_wrap=True)
    try:
        web.serve_forever()
    finally:
        if scrape is not None:
            metrics.stop_serving(scrape)
        gateway.close()


def _sign_on(issuer: str | None, client_id: str | None, secret_file: Path | None,
             audience: str | None) -> SignOn | None:
    """The single sign-on settings from the --oidc-* options, or None without --oidc-issuer."""
    from chorus.server.dashboard.sso import SignOn, SsoSettings

    if issuer is None:
        if client_id or secret_file or audience:
            raise fail("--oidc-client-id, --oidc-client-secret-file and --oidc-audience need --oidc-issuer", 2)
        return None
    if not client_id or not audience:
        raise fail("--oidc-issuer needs --oidc-client-id and --oidc-audience (the server's oidc.audience)", 2)
    try:
        check_issuer(issuer, "--oidc-issuer")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    secret = None
    if secret_file is not None:
        try:
            secret = secret_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read --oidc-client-secret-file {secret_file}: {exc.strerror}", 2) from None
        if not secret:
            raise fail(f"--oidc-client-secret-file {secret_file} is empty", 2)
    return SignOn(SsoSettings(issuer, client_id, audience, secret))
