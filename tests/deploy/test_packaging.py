"""What the packaging tells people (issue 23): the install commands name only what works (the
source tree, or a wheel built from it; `chorus-telemetry` is on no package registry), one
package name everywhere, and the LICENSE pyproject declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
#: Files that tell people how to install Chorus.
TELLING = [ROOT / "README.md", ROOT / "deploy" / "chorus.service", ROOT / "server" / "chorus" / "server" / "_entry.py",
           *sorted((ROOT / "docs").glob("*.md"))]


def test_no_install_command_names_a_registry_package() -> None:
    """`pip install chorus-telemetry[...]` would fetch whatever someone registers under that name."""
    for path in TELLING:
        text = path.read_text(encoding="utf-8")
        assert not re.search(rf"pip install\s+['\"]?{re.escape(NAME)}\b", text), path
        assert not re.search(r"pip install\s+['\"]?chorus\b(?![-_./])", text), path


def test_the_package_name_agrees_in_pyproject_docs_and_the_unit() -> None:
    assert NAME == "chorus-telemetry"
    assert "chorus_telemetry-VERSION-py3-none-any.whl[server]" in (ROOT / "deploy" / "chorus.service").read_text()
    assert f"The `{NAME}` package is not published on a package registry" in (ROOT / "docs" / "sdk.md").read_text()


def test_the_license_is_the_apache_2_text_pyproject_declares() -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_changelog_covers_every_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    for heading in ("## Round 3", "## Version 2", "## Version 1"):
        assert heading in text


@pytest.mark.slow
def test_the_base_install_message_names_an_install_that_works(tmp_path: Path) -> None:
    """The console script without the server's dependencies: one message, no traceback."""
    blocker = tmp_path / "typer.py"
    blocker.write_text("raise ImportError('blocked for the test', name='typer')\n")
    run = subprocess.run([sys.executable, "-c", "from chorus.server._entry import main; main()"],
                         capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(tmp_path), "PATH": ""},
                         check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "chorus: the server tools are not installed (typer is missing)" in run.stderr
    assert "`pip install '.[server]'` in a checkout, or a wheel built from it (`python -m build`" in run.stderr
