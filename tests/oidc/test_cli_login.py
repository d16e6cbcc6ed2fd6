"""`chorus login` (device flow) against a real OpenID Connect provider: the person confirms the
code in a browser (here: the provider's own pages over HTTP), the token lands in a 0600 file,
and other commands use that file as they use a `chorus_` token file."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests._idp import AUDIENCE, CLI_CLIENT, IdentityProvider, approve_device
from tests._secrets import register

from .test_access_tokens import SsoServer

pytestmark = pytest.mark.slow  # a Node.js provider, a server on a socket and CLI processes


def chorus(*args: str) -> list[str]:
    return [sys.executable, "-m", "chorus.server.cli", *args]


def login(provider: IdentityProvider, user: str, token_file: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(chorus("login", "--oidc-issuer", provider.issuer, "--oidc-client-id", CLI_CLIENT,
                                   "--oidc-audience", AUDIENCE, "--token-file", str(token_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    shown = re.search(r"open (\S+) and confirm the code (\S+)\.", line)
    assert shown, line
    assert "Sign-in Success" in approve_device(shown[1], user)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, line + out, err)


def test_the_device_flow_writes_a_private_token_file_other_commands_use(
        provider: IdentityProvider, tmp_path: Path) -> None:
    token_file = tmp_path / "config" / "token"
    done = login(provider, "omar", token_file)
    assert done.returncode == 0, done.stderr
    assert f"signed in; the access token is in {token_file}" in done.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    register(token)
    assert token.count(".") == 2 and token not in done.stdout + done.stderr
    sso = SsoServer(tmp_path / "chorus", provider.issuer)
    try:
        stats = subprocess.run(chorus("stats", "--server", sso.server.address, "--token-file", str(token_file)),
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0, stats.stderr  # omar's group maps to admin
        budget = subprocess.run(chorus("budget", "--server", sso.server.address, "--token-file", str(token_file)),
                                capture_output=True, text=True, timeout=60)
        assert budget.returncode == 4  # PERMISSION_DENIED: admin is not auditor
        assert "user 'omar@example.com' has role admin" in " ".join(budget.stderr.split())
    finally:
        sso.stop()


def test_an_unsafe_issuer_is_refused_before_any_request(tmp_path: Path) -> None:
    done = subprocess.run(chorus("login", "--oidc-issuer", "http://login.example.com", "--oidc-client-id", "c",
                                 "--oidc-audience", "a", "--token-file", str(tmp_path / "t")),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--oidc-issuer = 'http://login.example.com': must be an https:// URL" in " ".join(done.stderr.split())
    assert not (tmp_path / "t").exists()
