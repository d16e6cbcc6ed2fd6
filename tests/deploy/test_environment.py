"""`chorus serve` settings: flag > environment variable > config file > default, stated once in
docs/deployment.md ("Settings") and checked here in-process through each setting's own
validation error, which names the value it got (nothing is started, no data directory made)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli.serve import SERVE_ENVIRONMENT
from chorus.server.model.config import DEFAULT_TOML

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def serve(tmp_path: Path, env: dict[str, str], *flags: str) -> str:
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "data"), *flags],
                                env={"COLUMNS": "400", **env})
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "data").exists()
    return result.output


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "chorus.toml"
    text = DEFAULT_TOML.replace('listen = "127.0.0.1:7355"', 'listen = "10.0.0.3:7355"')
    assert text != DEFAULT_TOML
    path.write_text(text)
    return path


def test_listen_flag_beats_env_beats_config(tmp_path: Path, config: Path) -> None:
    refused = "refusing plaintext on non-loopback address {}"
    assert refused.format("10.0.0.3:7355") in serve(tmp_path, {"CHORUS_CONFIG": str(config)})
    env = {"CHORUS_CONFIG": str(config), "CHORUS_LISTEN": "10.0.0.2:7355"}
    assert refused.format("10.0.0.2:7355") in serve(tmp_path, env)
    assert refused.format("10.0.0.1:7355") in serve(tmp_path, env, "--listen", "10.0.0.1:7355")


@pytest.mark.parametrize(("variable", "flag", "message"), [
    ("CHORUS_METRICS_LISTEN", "--metrics-listen", "--metrics-listen {!r} is not a listen address"),
    ("CHORUS_LOG_FORMAT", "--log-format", "log format {!r}: must be one of text, json"),
    ("CHORUS_LOG_LEVEL", "--log-level", "log level {!r}: must be one of DEBUG"),
    ("CHORUS_WORKERS", "--workers", "--workers {!r}: expected a number from 1 to 64"),
])
def test_flag_beats_env(tmp_path: Path, variable: str, flag: str, message: str) -> None:
    assert message.format("from-env") in serve(tmp_path, {variable: "from-env"})
    assert message.format("from-flag") in serve(tmp_path, {variable: "from-env"}, flag, "from-flag")


def test_tls_files_and_otlp_from_env(tmp_path: Path) -> None:
    assert "--tls-cert and --tls-key go together" in serve(tmp_path, {"CHORUS_TLS_CERT": "/c.pem"})
    assert "--client-ca (mTLS) needs --tls-cert" in serve(tmp_path, {"CHORUS_CLIENT_CA": "/ca.pem"})
    assert "cannot read --tls-cert /nonexistent.pem" in serve(
        tmp_path, {"CHORUS_TLS_CERT": "/nonexistent.pem", "CHORUS_TLS_KEY": "/nonexistent.key"})
    assert "refusing plaintext OTLP/HTTP on non-loopback address 10.0.0.9:4318" in serve(
        tmp_path, {"CHORUS_OTLP_HTTP_LISTEN": "10.0.0.9:4318"})


def test_every_variable_is_in_help_and_documented() -> None:
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400"}).output
    documented = DOCS.read_text().split("## Settings: flags, environment, config file", 1)[1].split("\n## ", 1)[0]
    for variable in SERVE_ENVIRONMENT:
        assert variable in help_text, variable
        assert f"`{variable}`" in documented, variable
    assert set(re.findall(r"`(CHORUS_[A-Z_]+)`", documented)) == set(SERVE_ENVIRONMENT)
    assert "flag > environment variable > config file > default" in documented
