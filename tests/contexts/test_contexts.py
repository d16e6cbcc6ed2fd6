"""Client contexts (docs/cli.md, "Contexts") and shell completion: `chorus context list|use|show`,
`--context` / CHORUS_CONTEXT, flag > environment > context > default, XDG_CONFIG_HOME, and a
context with TLS and a client certificate reaching a real mTLS server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from chorus.server.cli import app
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server, TlsConfig
from tests._certs import make_certs
from tests._policy import suite_config

CONFIG = """\
current-context = "local"

[contexts.local]
server = "127.0.0.1:1"
token_file = "local.token"

[contexts.prod]
server = "10.1.2.3:7355"
ca = "ca.pem"

[contexts.prod.oidc]
issuer = "https://idp.example.com"
client_id = "chorus-cli"
audience = "chorus"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config home with CONFIG in it, and no CHORUS_* variable from the caller's environment."""
    for name in [n for n in os.environ if n.startswith("CHORUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "chorus").mkdir(parents=True)
    (tmp_path / "xdg" / "chorus" / "config.toml").write_text(CONFIG)
    return tmp_path / "xdg" / "chorus"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400", **(env or {})})


def test_list_use_show(home: Path) -> None:
    listed = run("context", "list")
    assert listed.exit_code == 0
    assert [line.split() for line in listed.output.splitlines()] == [["*", "local", "127.0.0.1:1"],
                                                                      ["prod", "10.1.2.3:7355"]]
    shown = run("context", "show")
    assert shown.output.splitlines() == ["context: local", "server: 127.0.0.1:1",
                                         f"token_file: {home / 'local.token'}"]  # relative to the file
    assert run("context", "use", "prod").output == "current context: prod\n"
    assert (home / "config.toml").read_text() == CONFIG.replace('"local"', '"prod"', 1)  # nothing else changed
    prod = run("context", "show").output
    assert f"ca: {home / 'ca.pem'}" in prod and "oidc_issuer: https://idp.example.com" in prod
    missing = run("context", "use", "nope")
    assert missing.exit_code == 2 and "no context 'nope'" in missing.output
    assert "contexts: local, prod" in missing.output


def test_the_file_is_under_home_without_xdg(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert f"no contexts in {tmp_path / 'home' / '.config' / 'chorus' / 'config.toml'}" in run("context", "list").output
    (tmp_path / "home" / ".config").mkdir(parents=True)
    (tmp_path / "home" / ".config" / "chorus").symlink_to(home)
    assert "* local" in run("context", "list").output


def test_flag_beats_env_beats_context_beats_default(home: Path, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("chorus_" + "x" * 40)

    def unreachable(*args: str, env: dict[str, str] | None = None) -> str:
        result = run(*args, "stats", env={"CHORUS_TOKEN_FILE": str(token), **(env or {})})
        assert result.exit_code == 9, result.output
        return result.output.split("cannot reach Chorus at ")[1].split(":")[1]

    assert unreachable() == "1"  # the current context
    assert unreachable(env={"CHORUS_SERVER": "127.0.0.1:2"}) == "2"
    assert unreachable("--context", "local", env={"CHORUS_SERVER": "127.0.0.1:2"}) == "2"
    assert run("stats", "--server", "127.0.0.1:3", env={"CHORUS_TOKEN_FILE": str(token), "CHORUS_SERVER":
                                                         "127.0.0.1:2"}).output.count("127.0.0.1:3") >= 1
    # The token file: the context's, unless CHORUS_TOKEN_FILE or --token-file says otherwise.
    assert f"--token-file {home / 'local.token'}" in run("stats").output.replace("\n", " ")
    env_token = run("stats", env={"CHORUS_TOKEN_FILE": "/nonexistent/env.token"}).output
    assert "CHORUS_TOKEN_FILE=/nonexistent/env.token" in env_token
    flag_token = run("stats", "--token-file", "/nonexistent/flag.token",
                     env={"CHORUS_TOKEN_FILE": "/nonexistent/env.token"}).output
    assert "--token-file /nonexistent/flag.token" in flag_token
    # CHORUS_CONTEXT selects, --context beats it; no context: the built-in default server.
    prod = run("stats", env={"CHORUS_CONTEXT": "prod", "CHORUS_TOKEN_FILE": str(token)}).output
    assert f"cannot read CA bundle {home / 'ca.pem'}" in prod.replace("\n", "")  # prod's CA
    assert "context: local" in run("--context", "local", "context", "show", env={"CHORUS_CONTEXT": "prod"}).output
    (home / "config.toml").write_text("")
    assert unreachable().startswith("7355")


@pytest.mark.parametrize(("text", "message"), [
    ('[contexts.a]\nsever = "x:1"\n', "unknown key 'sever' (valid: server, ca, client_cert, client_key, "
                                      "token_file, oidc)"),
    ('[contexts.a.oidc]\nissuer = "https://i"\n', "context 'a': oidc needs exactly issuer, client_id, audience"),
    ('current-context = "b"\n[contexts.a]\n', "no context 'b' (current-context)"),
    ("[contexts\n", "cannot read the client config"),
])
def test_a_bad_file_is_refused_by_key(home: Path, text: str, message: str) -> None:
    (home / "config.toml").write_text(text)
    result = run("stats")
    assert result.exit_code == 2 and message in result.output.replace("\n", ""), result.output


def test_completion_scripts(home: Path) -> None:
    assert "complete -o default -F _chorus_completion chorus" in run("completion", "bash").output
    assert "#compdef chorus" in run("completion", "zsh").output
    assert "complete --command chorus" in run("completion", "fish").output
    assert run("completion", "tcsh").exit_code == 2


@pytest.mark.slow
def test_bash_completes_commands_and_context_names(home: Path) -> None:
    """The script in a real bash, calling the real `chorus` back for commands and context names."""
    chorus = Path(sys.executable).with_name("chorus")
    script = subprocess.run([str(chorus), "completion", "bash"], capture_output=True, text=True, check=True).stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        probe = (f'{script}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words) - 1}\n'
                 '_chorus_completion chorus\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PATH": f"{chorus.parent}:{os.environ['PATH']}"})
        return out.stdout.split()

    assert {"context", "completion"} <= set(complete("chorus co"))
    assert complete("chorus context use p") == ["prod"]


@pytest.fixture
def mtls_server(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    certs = make_certs(tmp_path / "certs")
    chorus = Chorus(suite_config(), tmp_path / "data")
    token = chorus.tokens.create(Role.ADMIN, "context-admin", chorus.clock.now(), actor="test")[0]
    tls = TlsConfig((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes(),
                    (certs / "ca.pem").read_bytes())
    server = Server(chorus, "localhost:0", tls=tls)
    server.start()
    try:
        yield server.address, certs, token
    finally:
        server.stop(grace=0)


@pytest.mark.slow
def test_a_context_with_tls_and_a_client_certificate_reaches_a_real_mtls_server(
        home: Path, tmp_path: Path, mtls_server: tuple[str, Path, str]) -> None:
    address, certs, token = mtls_server
    (tmp_path / "admin.token").write_text(token)
    (home / "config.toml").write_text(f"""current-context = "mtls"
[contexts.mtls]
server = "{address}"
ca = "{certs / 'ca.pem'}"
client_cert = "{certs / 'client.pem'}"
client_key = "{certs / 'client.key'}"
token_file = "{tmp_path / 'admin.token'}"
""")
    result = run("token", "list")
    assert result.exit_code == 0, result.output
    assert "context-admin" in result.output
    without = run("token", "list", "--ca", str(certs / "ca.pem"), "--client-cert", str(certs / "client.pem"),
                  "--client-key", str(certs / "client.key"), "--server", address, env={"CHORUS_CONTEXT": "mtls"})
    assert without.exit_code == 0
