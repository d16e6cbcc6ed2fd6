"""The `chorus` command: one entry point, one sub-module per area."""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Annotated

import typer
from typer import _completion_classes

from chorus.server.cli import (
    admin,
    audit,
    backup,
    bounds,
    certs,
    completion,
    contexts,
    dashboard,
    demo,
    digest,
    health,
    login,
    report,
    serve,
)

app = typer.Typer(help="Chorus: AI-usage telemetry that releases team statistics only, with "
                       "differential privacy. Nobody can be ranked.",
                  no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  add_completion=False)


def _version(value: bool) -> None:
    if value:
        print(f"chorus {package_version('chorus-telemetry')}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context,
          version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")] = None,
          context: contexts.ContextOpt = None) -> None:
    """Chorus: AI-usage telemetry that releases team statistics only, with differential privacy."""
    if ctx.resilient_parsing:  # shell completion: no file errors
        return
    selected = contexts.selected(context)
    if selected is not None:  # flag > environment > context > default (cli/contexts.py)
        ctx.default_map = contexts.default_map(ctx.command, selected)


app.command("serve")(serve.serve)
app.command("health")(health.health)
app.command("backup")(backup.backup)
app.command("default-config")(serve.default_config)
app.add_typer(serve.config_app, name="config")
app.command("demo")(demo.demo)
app.add_typer(admin.roster_app, name="roster")
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.window_app, name="window")
app.add_typer(certs.certs_app, name="certs")
app.command("stats")(admin.stats)
app.add_typer(audit.audit_app, name="audit")
app.command("budget")(audit.budget)
app.command("privacy-statement")(audit.privacy_statement)
app.command("dashboard")(dashboard.dashboard)
app.command("report")(report.report)
app.command("bounds")(bounds.bounds)
app.command("digest")(digest.digest)
app.command("login")(login.login)
app.add_typer(contexts.context_app, name="context")
app.command("completion")(completion.completion)


def main() -> None:
    _completion_classes.completion_init()  # typer's bash/zsh/fish answers to `chorus completion`'s scripts
    app(prog_name=completion.PROG)
