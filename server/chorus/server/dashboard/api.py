"""The dashboard's read-only JSON API of released numbers, for Grafana (JSON API / Infinity data
sources), spreadsheets and scripts.

- `GET /api/v1/windows`: the closed windows, newest first.
- `GET /api/v1/report`: the records `chorus report --format json` prints for the same question
  (`window`, `statistic`, `metric`, `team`, `level`, `node` as its options; `front/report_records`
  builds both), paged: `page_size` (1 to 5,000, default 1,000) and the `next_page_token` of the
  previous page. A page token is an offset into the answer as it is at each request.

The same rules as the pages: an analyst token, as `Authorization: Bearer <token>` (what a data
source sends) or the dashboard's session cookie; an auditor's token or none is refused (403,
401). It only reads (`validate_only`), so nothing is ever spent; what is not released is a
record with outcome "not released" and its price, as in the CLI. Errors are JSON objects
`{"error": message}` with the HTTP status the pages would give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest

from chorus.server.dashboard.gateway import Api, Gateway, GatewayError, LoginRejected
from chorus.server.dashboard.pages import closed_windows, utc
from chorus.server.front.report_records import org_nodes, records
from chorus.server.model import hierarchy
from chorus.server.model.roles import Role
from chorus.server.model.statistics import Statistic
from chorus.v1 import release_pb2

PAGE_SIZE, MAX_PAGE_SIZE = 1_000, 5_000
LEVELS = ("team", "org", "company")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def register(app: Flask, gateway: Gateway) -> None:
    """The API's routes on the dashboard's app (its own authentication: no redirect to sign-in)."""
    api = Blueprint("api", __name__, url_prefix="/api/v1")

    def analyst(view: Callable[[Api], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            token = _bearer()
            try:
                if token is not None:
                    role = gateway.identify(token)
                elif g.get("session") is not None:
                    token, role = g.session.token, g.session.role
                else:
                    return _error(401, "send an analyst token as 'Authorization: Bearer <token>' (or sign in)")
                if role != Role.ANALYST:
                    return _error(403, f"the API reads released numbers, for an analyst token; this one is "
                                       f"{role.value}'s")
                return view(gateway.as_user(token))
            except LoginRejected as exc:
                return _error(401, f"token refused: {exc}")
            except GatewayError as exc:
                return _error(exc.http_status, exc.message)
            except BadRequest as exc:
                return _error(400, exc.description or "bad request")
        wrapped.__name__ = view.__name__
        return wrapped

    @api.get("/windows")
    @analyst
    def windows(user: Api) -> Response:
        return jsonify({"windows": [{"id": w.id, "start": utc(w.start), "end": utc(w.end)}
                                    for w in closed_windows(user)]})

    @api.get("/report")
    @analyst
    def report(user: Api) -> Response:
        found = list(records([read(user)]))
        size = _number("page_size", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        start = _number("page_token", 0, 0, max(len(found), 0))
        end = start + size
        return jsonify({"records": found[start:end], "next_page_token": str(end) if end < len(found) else ""})

    app.register_blueprint(api)


def _number(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name}={raw[:20]!r} must be a whole number from {low} to {high}")
    return int(raw)


def _statistics() -> list[Statistic]:
    chosen = []
    for raw in request.args.getlist("statistic") or [Statistic.SUM.value]:
        try:
            chosen.append(Statistic(raw))
        except ValueError:
            raise BadRequest(f"statistic={raw[:20]!r} is not one of: {', '.join(s.value for s in Statistic)}") from None
    return list(dict.fromkeys(chosen))


def read(user: Api) -> release_pb2.ReleaseResponse:
    """What `chorus report --format json` reads for the same options (never spends)."""
    closed = [w.id for w in closed_windows(user)]
    window = request.args.get("window") or (closed[0] if closed else "")
    if not window:
        raise BadRequest("no closed window yet: a window is released only after it closes")
    statistics = _statistics()
    if Statistic.ADOPTION not in statistics:  # a read adds adoption, as the CLI's does
        statistics.append(Statistic.ADOPTION)
    level = request.args.get("level", "team")
    if level not in LEVELS:
        raise BadRequest(f"level={level[:20]!r} is not one of: {', '.join(LEVELS)}")
    nodes = request.args.getlist("node")
    if level == "company":
        nodes.insert(0, hierarchy.COMPANY)
    elif level == "org":
        nodes[:0] = org_nodes(user.list_teams(window).teams)
    return user.read(window, [s.proto for s in statistics], teams=request.args.getlist("team"),
                     metrics=request.args.getlist("metric"), nodes=nodes)
