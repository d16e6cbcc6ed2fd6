"""Development certificates for TLS tests: the real `chorus certs dev`."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chorus.server.cli import app


def make_certs(directory: Path) -> Path:
    """Run `chorus certs dev --out DIRECTORY` through the CLI."""
    result = CliRunner().invoke(app, ["certs", "dev", "--out", str(directory)])
    assert result.exit_code == 0, result.output
    return directory
