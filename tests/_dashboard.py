"""Signing in to the dashboard through its real form, for every folder that drives one."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(response: TestResponse) -> str:
    match = _CSRF.search(response.get_data(as_text=True))
    assert match, "page has no CSRF field"
    return match[1]


def login(client: FlaskClient, token: str, next_path: str | None = None) -> TestResponse:
    """Sign in through the real form (GET for its CSRF token, then POST)."""
    form = client.get("/login")
    data = {"csrf": csrf_of(form), "token": token}
    if next_path is not None:
        data["next"] = next_path
    return client.post("/login", data=data)
