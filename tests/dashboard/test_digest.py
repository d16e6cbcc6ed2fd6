"""`chorus digest` delivers the landing page's answers: to a Slack-compatible webhook (a local HTTP
receiver) and by email (a real SMTP server, aiosmtpd), with the link; it never spends."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model.roles import Role

from .conftest import DAYS, LATEST, Stack

pytestmark = pytest.mark.slow  # a gRPC server, an HTTP receiver and an SMTP server on sockets


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


class Inbox:
    def __init__(self) -> None:
        self.mails: list[Any] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.mails.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def run(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(app, ["digest", "--server", stack.server.address, "--token",
                                      stack.tokens[Role.ANALYST], "--dashboard-url", "https://chorus.example",
                                      *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_digest_goes_to_a_webhook_and_by_mail_and_spends_nothing(
        stack: Stack, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    before = (stack.budgets(), stack.ledger_size())
    printed = run(stack)  # no destination: printed
    assert printed.startswith(f"Chorus digest, window {LATEST}")
    assert "Company adoption: growing" in printed or "Company adoption: no clear trend" in printed \
        or "Company adoption: falling" in printed
    assert "Company adoption: " in printed and f"since {DAYS[1]}" in printed
    assert f"Details: https://chorus.example/overview?window={LATEST}" in printed

    url, got = receiver
    run(stack, "--webhook", url)
    assert len(got) == 1 and got[0]["text"].startswith(f"*Chorus digest, window {LATEST}*\n")
    assert printed.split("\n\n", 1)[1].strip() in got[0]["text"]

    inbox = Inbox()
    with socket.socket() as probe:  # a free port: aiosmtpd checks its own port once started
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        run(stack, "--smtp", f"127.0.0.1:{port}", "--mail-from",
            "chorus@example.com", "--mail-to", "vp@example.com")
    finally:
        smtp.stop()
    (recipients, mail), = inbox.mails
    assert recipients == ["vp@example.com"] and mail["Subject"] == f"Chorus digest, window {LATEST}"
    assert f"Details: https://chorus.example/overview?window={LATEST}" in mail.get_payload(decode=True).decode()
    assert (stack.budgets(), stack.ledger_size()) == before


def test_the_digest_says_what_it_cannot_do(stack: Stack) -> None:
    result = CliRunner().invoke(app, ["digest", "--server", stack.server.address, "--token",
                                      stack.tokens[Role.ANALYST], "--dashboard-url", "https://x",
                                      "--smtp", "127.0.0.1:25"])
    assert result.exit_code == 2 and "--smtp needs --mail-from and at least one --mail-to" in result.output
    result = CliRunner().invoke(app, ["digest", "--server", stack.server.address, "--token",
                                      stack.tokens[Role.ANALYST], "--dashboard-url", "https://x",
                                      "--webhook", "http://127.0.0.1:1/hook"])
    assert result.exit_code == 9 and "--webhook: the webhook did not take the message" in result.output
