"""The dashboard process's own operational signals: `/healthz` and Prometheus metrics.

Invariants:

* No label names a person, a team, a token or a session: pages are the app's route rules
  (a fixed set written in the code; an unmatched path counts as "unmatched"), statuses are
  HTTP codes, sign-in outcomes and upstream error codes are fixed names. The dashboard's
  metrics are operational only, like the server's (docs/privacy.md).
* The registry is the app's own (no global registry), served on a separate opt-in listener
  (`chorus dashboard --metrics-listen`), never on the page port, which people reach.
* `/healthz` needs no session: 200 while the dashboard serves and its Chorus server accepts a
  connection within `HEALTH_TIMEOUT`, else 503; the body says which.
* web.py records what this module counts, in `g`: `g.sign_in` = (method, outcome) of a
  sign-in attempt (token or sso; accepted, refused, error), `g.upstream_error` = the gRPC code
  of a failed call to the Chorus server that it turned into a page.
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import version as package_version

from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from werkzeug.wrappers import Response

from chorus.server.dashboard.gateway import Gateway

#: Seconds /healthz waits for the Chorus server's connection.
HEALTH_TIMEOUT = 2.0
#: Page latency buckets (seconds): a cached page in milliseconds up to a slow upstream release.
PAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DashboardMetrics:
    """Requests by page and status, sign-ins by outcome, upstream errors by gRPC code."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("chorus_dashboard_requests", "HTTP requests by route and status code "
                                "(route 'unmatched' for paths the dashboard does not serve).",
                                ["page", "status"], registry=self.registry)
        self.seconds = Histogram("chorus_dashboard_request_seconds", "Time to answer an HTTP request, by route.",
                                 ["page"], buckets=PAGE_BUCKETS, registry=self.registry)
        self.sign_ins = Counter("chorus_dashboard_sign_ins", "Sign-in attempts by method (token, sso) and "
                                "outcome: accepted, refused (unknown, revoked or wrong-role token, or the "
                                "identity provider's refusal), error (the Chorus server failed).",
                                ["method", "outcome"], registry=self.registry)
        self.upstream_errors = Counter("chorus_dashboard_upstream_errors", "Calls to the Chorus server that "
                                       "failed, by gRPC status code.", ["code"], registry=self.registry)
        ProcessCollector(registry=self.registry)
        Info("chorus_build", "The running Chorus: package version and Python version (value 1).",
             registry=self.registry).info({"version": package_version("chorus-telemetry"),
                                           "python": platform.python_version()})


def install(app: Flask, gateway: Gateway) -> DashboardMetrics:
    """Add /healthz and the request metrics to `app`; return the metrics (their registry to serve)."""
    metrics = DashboardMetrics()

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        page = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(page, str(response.status_code)).inc()
        if "started" in g:
            metrics.seconds.labels(page).observe(time.perf_counter() - g.started)
        if (attempt := g.get("sign_in")) is not None:
            metrics.sign_ins.labels(*attempt).inc()
        if (code := g.get("upstream_error")) is not None:
            metrics.upstream_errors.labels(code).inc()
        return response

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        if gateway.reachable(timeout=HEALTH_TIMEOUT):
            return jsonify(status="ok", upstream="reachable")
        return jsonify(status="unavailable", upstream=f"no connection to {gateway.server} within "
                       f"{HEALTH_TIMEOUT:g} s"), 503

    return metrics
