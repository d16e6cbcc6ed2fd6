"""The dashboard's Flask application: sign-in, sessions, CSRF, role-separated pages, CSV downloads.

Security model: the browser holds only a random session id (HttpOnly, SameSite=Strict, Secure over
HTTPS); the person's token stays in this process and goes only to the Chorus server. Every POST
carries a CSRF token. Pages are server-rendered with no JavaScript, and a strict
Content-Security-Policy keeps every request on the dashboard's own origin.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from flask import Flask, Response, abort, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from chorus.server.dashboard import api, orgs, pages
from chorus.server.dashboard.gateway import Gateway, GatewayError, LoginRejected
from chorus.server.dashboard.sessions import Session, SessionStore
from chorus.server.dashboard.sso import Grant, SignOn, SsoError
from chorus.server.front import spending
from chorus.server.model.clock import Clock, SystemClock
from chorus.server.model.roles import Role
from chorus.v1 import common_pb2

_log = logging.getLogger(__name__)

SESSION_COOKIE = "chorus_session"
#: The id of a sign-in in progress at the identity provider (SameSite=Lax: the provider's
#: redirect back is a cross-site navigation; the id is good for one callback only).
SSO_COOKIE = "chorus_sso"
LOGIN_CSRF_COOKIE = "chorus_login_csrf"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
ROLE_TITLES = {Role.ANALYST: "leadership (analyst)", Role.AUDITOR: "privacy officer (auditor)"}


@dataclass(frozen=True, slots=True)
class PageSpec:
    """A page of the dashboard: its URL name, who may open it, and how its data is built."""

    endpoint: str
    label: str
    role: Role
    builder: pages.Builder
    #: Whether the page has charts, and so a CSV download per chart.
    charts: bool = True


PAGES = (
    PageSpec("overview", "Overview", Role.ANALYST, pages.overview),
    PageSpec("orgs", "Organisation", Role.ANALYST, orgs.org_view),
    PageSpec("trends", "Trends", Role.ANALYST, pages.trends),
    PageSpec("histogram", "Distribution", Role.ANALYST, pages.histogram),
    PageSpec("spend", "Release more", Role.ANALYST, pages.spend, charts=False),
    PageSpec("budget", "Budget", Role.AUDITOR, pages.budget),
    PageSpec("ledger", "Ledger", Role.AUDITOR, pages.ledger, charts=False),
    PageSpec("policies", "Policies", Role.AUDITOR, pages.policies, charts=False),
    PageSpec("statement", "Privacy statement", Role.AUDITOR, pages.statement, charts=False),
)
_BY_ENDPOINT = {p.endpoint: p for p in PAGES} | {f"{p.endpoint}_csv": p for p in PAGES if p.charts}
_BY_ENDPOINT["statement_md"] = _BY_ENDPOINT["statement"]
_BY_ENDPOINT["spend_confirm"] = _BY_ENDPOINT["spend"]


def create_app(gateway: Gateway, *, clock: Clock | None = None, sessions: SessionStore | None = None,
               idle_timeout: timedelta = timedelta(minutes=30), sso: SignOn | None = None) -> Flask:
    """A dashboard that reads from the Chorus server behind `gateway`.

    Sessions expire after `idle_timeout` by `clock` unless a ready `sessions` store is given.
    With `sso`, people may also sign in through the identity provider (`sso.py`).
    """
    app = Flask(__name__)
    # Only the sign-in and sign-out forms post, and both are tiny.
    app.config.update(MAX_CONTENT_LENGTH=8 * 1024, MAX_FORM_MEMORY_SIZE=8 * 1024)
    clock = clock or SystemClock()
    store = sessions if sessions is not None else SessionStore(clock, idle=idle_timeout)
    app.jinja_env.globals.update(utc=pages.utc, duration=pages.duration, role_titles=ROLE_TITLES,
                                 window_closed=common_pb2.WINDOW_STATE_CLOSED, describe=spending.describe,
                                 org_filter=lambda: request.args.get("org", ""))

    def home_for(role: Role) -> str:
        return url_for(next(p.endpoint for p in PAGES if p.role == role))

    def set_cookie(response: BaseResponse, name: str, value: str) -> None:
        # A browser-session cookie: the server decides when the session ends.
        response.set_cookie(name, value, httponly=True, samesite="Strict", secure=request.is_secure, path="/")

    @app.before_request
    def load_session() -> BaseResponse | None:
        g.session = store.get(request.cookies.get(SESSION_COOKIE))
        if request.method == "POST" and request.endpoint != "login":
            if g.session is None:
                return redirect(url_for("login"), 303)
            if not g.session.csrf_ok(request.form.get("csrf")):
                abort(400, "this form has expired or did not come from this dashboard: reload the page "
                           "and try again")
        spec = _BY_ENDPOINT.get(request.endpoint or "")
        if spec is None:
            return None
        if g.session is None:
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        if g.session.role != spec.role:
            abort(403, f"this page is for {ROLE_TITLES[spec.role]}; you are signed in as "
                       f"{ROLE_TITLES[g.session.role]}")
        return renew_sso()

    def renew_sso() -> BaseResponse | None:
        """An SSO session's access token renewed before it expires; a refusal ends the session."""
        grant = g.session.grant
        if sso is None or grant is None or not grant.due(clock.now()):
            return None
        try:
            g.session.renewed(sso.renew(grant, clock.now()))
        except SsoError as exc:
            _log.info("SSO session ended: %s", exc)
            store.delete(g.session.id)
            response = redirect(url_for("login", reason="expired", next=request.full_path.rstrip("?")))
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def layout() -> dict[str, Any]:
        session: Session | None = g.get("session")
        return {"session": session, "server": gateway.server, "server_tls": gateway.tls,
                "nav": [p for p in PAGES if session and p.role == session.role]}

    @app.errorhandler(GatewayError)
    def gateway_error(exc: GatewayError) -> BaseResponse | tuple[str, int]:
        g.upstream_error = exc.code.name  # counted by observability.py
        if exc.code == grpc.StatusCode.UNAUTHENTICATED and g.get("session") is not None:
            # The token was revoked since sign-in: the session is worthless now.
            store.delete(g.session.id)
            response = redirect(url_for("login", reason="revoked"))
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response
        return render_template("error.html", status=exc.http_status, message=exc.message,
                               quota=exc.quota), exc.http_status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        status = exc.code or 500
        return render_template("error.html", status=status, message=exc.description, quota=()), status

    @app.get("/")
    def index() -> BaseResponse:
        return redirect(home_for(g.session.role) if g.session else url_for("login"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> BaseResponse | tuple[str, int]:
        if g.session is not None and request.method == "GET":
            return redirect(home_for(g.session.role))
        # Login CSRF: a double-submit token, since there is no session to bind it to yet.
        csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        error, status = None, 200
        if request.method == "POST":
            posted = request.form.get("csrf", "")
            if not (request.cookies.get(LOGIN_CSRF_COOKIE) and hmac.compare_digest(posted, csrf)):
                error, status = "This form has expired: please sign in again.", 400
            else:
                error, status, response = sign_in(request.form.get("token", "").strip())
                if response is not None:
                    return response
        elif request.args.get("reason") == "revoked":
            error = "Your token is no longer valid (revoked or expired): sign in with a current token."
        elif request.args.get("reason") == "expired":
            error = ("Your single sign-on session has ended (signed out or expired at the identity "
                     "provider): sign in again.")
        body = render_template("login.html", csrf=csrf, error=error, next=safe_next(), sso=sso is not None)
        response = app.make_response((body, status))
        set_cookie(response, LOGIN_CSRF_COOKIE, csrf)
        return response

    def sign_in(token: str, grant: Grant | None = None,
                next_page: str | None = None) -> tuple[str | None, int, BaseResponse | None]:
        g.sign_in = ("token" if grant is None else "sso", "error")  # counted by observability.py
        try:
            role = gateway.identify(token) if grant is None else gateway.role_of(token)
        except LoginRejected as exc:
            _log.info("sign-in refused: %s", exc)
            g.sign_in = (g.sign_in[0], "refused")
            return f"Sign-in refused: {exc}.", 401, None
        except GatewayError as exc:
            g.upstream_error = exc.code.name  # counted by observability.py
            return exc.message, exc.http_status, None
        if g.session is not None:
            store.delete(g.session.id)
        session = store.create(token, role, grant)
        g.sign_in = (g.sign_in[0], "accepted")
        _log.info("sign-in as %s%s", role.value, " (single sign-on)" if grant else "")
        response = redirect(next_page or safe_next() or home_for(role), 303)
        set_cookie(response, SESSION_COOKIE, session.id)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return None, 303, response

    def safe_next() -> str | None:
        """A local path to return to after sign-in; anything else (other hosts) is dropped."""
        target = request.values.get("next", "")
        if target.startswith("/") and not target.startswith(("//", "/\\")) and target.isprintable():
            return target
        return None

    @app.get("/login/sso")
    def login_sso() -> BaseResponse | tuple[str, int]:
        """Off to the identity provider's sign-in page (authorization code with PKCE)."""
        if sso is None:
            abort(404, "this dashboard has no single sign-on configured: sign in with a token")
        try:
            url, key = sso.begin(url_for("oidc_callback", _external=True), safe_next())
        except SsoError as exc:
            return render_template("error.html", status=503, message=str(exc), quota=()), 503
        response = redirect(url, 303)
        response.set_cookie(SSO_COOKIE, key, httponly=True, samesite="Lax", secure=request.is_secure,
                            path=url_for("oidc_callback"))
        return response

    @app.get("/oidc/callback")
    def oidc_callback() -> BaseResponse | tuple[str, int]:
        """The provider's redirect back: the code for tokens, the role from the Chorus server."""
        if sso is None:
            abort(404, "this dashboard has no single sign-on configured")
        if "error" in request.args:  # the person cancelled, or the provider refused
            message = f"The identity provider did not sign you in ({request.args['error'][:64]})."
            return render_template("error.html", status=401, message=message, quota=()), 401
        try:
            grant, next_page = sso.finish(request.cookies.get(SSO_COOKIE), url_for("oidc_callback", _external=True),
                                          request.url, clock.now())
        except SsoError as exc:
            _log.info("SSO sign-in refused: %s", exc)
            g.sign_in = ("sso", "refused")  # counted by observability.py
            return render_template("error.html", status=401, message=str(exc), quota=()), 401
        error, status, response = sign_in(grant.access_token, grant, next_page)
        if response is None:
            sso.revoke(grant)
            return render_template("error.html", status=status, message=error, quota=()), status
        # A page, not a redirect: a redirect chain that began at the provider is cross-site, and
        # the browser would not send the SameSite=Strict session cookie to the page it lands on.
        target = response.headers["Location"]
        page = app.make_response(render_template("sso_done.html", target=target))
        for cookie in response.headers.getlist("Set-Cookie"):
            page.headers.add("Set-Cookie", cookie)
        page.delete_cookie(SSO_COOKIE, path=url_for("oidc_callback"))
        return page

    @app.post("/logout")
    def logout() -> BaseResponse:
        if sso is not None and g.session.grant is not None:
            sso.revoke(g.session.grant)
        store.delete(g.session.id)
        response = redirect(url_for("login"), 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/statement.md")
    def statement_md() -> Response:
        found = pages.statement_markdown(gateway.as_user(g.session.token), request.args)
        if found is None:
            abort(404, "no window has opened yet, so no policy is in force")
        window, markdown = found
        return Response(markdown, mimetype="text/markdown", headers={
            "Content-Disposition": f'attachment; filename="privacy-statement-{_filename(window)}.md"'})

    @app.post("/spend")
    def spend_confirm() -> str:
        """The confirmed release: the only request of the dashboard that spends budget."""
        reply = pages.release_confirmed(gateway.as_user(g.session.token), request.form)
        form = request.form
        statistic = form.get("statistic", "")
        metric = form.get("metric", "") if statistic != "adoption" else ""
        subject = f"{pages.STATISTIC_WORDS.get(statistic, statistic)}{f' of {metric}' if metric else ''}"
        back = (url_for("histogram", window=reply.window, metric=metric) if statistic == "histogram"
                else url_for("overview", window=reply.window))
        _log.info("release confirmed in the dashboard: %s, window %s", subject, reply.window)
        return render_template("spend_done.html", teams=reply.teams, window=reply.window, subject=subject,
                               back=back, page=None)

    for spec in PAGES:
        _register(app, spec, gateway)
    api.register(app, gateway)
    return app


def _register(app: Flask, spec: PageSpec, gateway: Gateway) -> None:
    """The HTML view of a page and its CSV download (one chart's table, picked by ?chart=)."""

    def build() -> pages.Page:
        return spec.builder(gateway.as_user(g.session.token), request.args)

    def html() -> str:
        page = build()
        csv_args = {k: v for k, v in request.args.items() if k != "chart"}
        return render_template(page.template, page=page, csv_args=csv_args,
                               csv_endpoint=f"{spec.endpoint}_csv", **page.context)

    def csv() -> Response:
        slug = request.args.get("chart", "")
        chart = build().chart(slug)
        if chart is None:
            abort(404, f"chart={slug[:40]!r} is not on this page")
        name = "-".join(part for part in (spec.endpoint, request.args.get("window", ""), slug) if part)
        return Response(chart.table.to_csv(), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{_filename(name)}.csv"'})

    app.add_url_rule(f"/{spec.endpoint}", spec.endpoint, html)
    if spec.charts:
        app.add_url_rule(f"/{spec.endpoint}.csv", f"{spec.endpoint}_csv", csv)


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]

