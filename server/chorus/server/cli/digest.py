"""`chorus digest`: the landing page's answers as a short message, to a Slack-compatible webhook
or by email, with a link to the dashboard.

Where it runs: from the scheduler that runs the weekly close (cron, a systemd timer, a CI job),
after the close has released the plan. It is an analyst's client like `chorus report`: it reads
the latest closed window (or --window) through the dashboard's own page builder, so the message
says exactly what the landing page says, and it never spends (every read is validate_only).
Nothing is sent unless --webhook or --smtp is given; without either it prints the message.
"""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Annotated

import typer
from werkzeug.datastructures import MultiDict

from chorus.server.cli._common import (
    CaOpt,
    CertOpt,
    ExitCode,
    KeyOpt,
    ServerOpt,
    TokenFileOpt,
    TokenOpt,
    fail,
    read_token,
)
from chorus.server.dashboard.gateway import Gateway, GatewayError
from chorus.server.dashboard.pages import overview


def message(gateway: Gateway, token: str, dashboard_url: str, window: str | None, weeks: int) -> tuple[str, str]:
    """(subject, text) of the digest: the trend's verdict, the headline tiles, and the link."""
    args = MultiDict({"n": str(weeks), **({"window": window} if window else {})})
    page = overview(gateway.as_user(token), args)
    shown = page.context.get("window")
    if shown is None:
        raise fail("no closed window yet: the digest follows a window's close", ExitCode.FAILED_PRECONDITION)
    answer = page.context.get("answer")
    lines = [answer.sentence if answer else "Not enough released windows for a trend yet.",
             *([answer.detail] if answer else [])]
    for tile in page.context.get("tiles", []):
        change = f"; {tile.change} ({tile.verdict})" if tile.change else ""
        lines.append(f"{tile.label}: {tile.value} ({tile.interval}){change}")
    lines.append(f"Details: {dashboard_url.rstrip('/')}/overview?window={shown}")
    return f"Chorus digest, window {shown}", "\n".join(lines)


def digest(
    dashboard_url: Annotated[str, typer.Option("--dashboard-url", help="The dashboard's address, for the link "
                                               "in the message, e.g. https://chorus.example.")],
    webhook: Annotated[str | None, typer.Option("--webhook", help="A Slack-compatible incoming webhook: "
                                                "the message is POSTed as JSON {\"text\": ...}.")] = None,
    smtp: Annotated[str | None, typer.Option("--smtp", help="An SMTP server HOST:PORT to send the message "
                                             "through (with --mail-from and --mail-to).")] = None,
    mail_from: Annotated[str | None, typer.Option("--mail-from", help="The sender address.")] = None,
    mail_to: Annotated[list[str] | None, typer.Option("--mail-to", help="A recipient; repeat for several.")] = None,
    window: Annotated[str | None, typer.Option("--window", "-w", help="Default: the latest closed window.")] = None,
    weeks: Annotated[int, typer.Option("--windows", min=2, max=52, help="The trend's windows.")] = 8,
    server: ServerOpt = "127.0.0.1:7355", token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """Send the landing page's answers (is adoption growing, the headline numbers) with a link.

    Run it after each weekly close; it only reads, so it never spends privacy budget.
    """
    if smtp is not None and not (mail_from and mail_to):
        raise fail("--smtp needs --mail-from and at least one --mail-to", ExitCode.USAGE)
    credential = read_token(token, token_file)
    gateway = Gateway(server, ca=ca, client_cert=client_cert, client_key=client_key)
    try:
        subject, text = message(gateway, credential.secret, dashboard_url, window, weeks)
    except GatewayError as exc:
        raise fail(exc.message, ExitCode.ERROR) from None
    finally:
        gateway.close()
    if webhook is None and smtp is None:
        print(f"{subject}\n\n{text}")
        return
    if webhook is not None:
        _post(webhook, {"text": f"*{subject}*\n{text}"})
    if smtp is not None:
        _mail(smtp, mail_from or "", mail_to or [], subject, text)
    typer.echo(f"sent: {subject}", err=True)


def _post(url: str, body: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"--webhook: the webhook did not take the message: {exc}", ExitCode.UNAVAILABLE) from None


def _mail(server: str, sender: str, recipients: list[str], subject: str, text: str) -> None:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise fail(f"--smtp {server!r} must be HOST:PORT", ExitCode.USAGE)
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = subject, sender, ", ".join(recipients)
    mail.set_content(text)
    try:
        with smtplib.SMTP(host, int(port), timeout=30) as client:
            client.send_message(mail)
    except (OSError, smtplib.SMTPException) as exc:
        raise fail(f"--smtp {server}: the message was not sent: {exc}", ExitCode.UNAVAILABLE) from None

