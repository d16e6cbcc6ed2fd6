"""Layers point one way, and the folders show them (docs/architecture.md, "Layers").

A module's layer is the first folder of its path under `server/chorus/server/`; the rules below
say which layers each may import. From the bottom up:

    privacy/    the mathematics of differential privacy: imports nothing else of the server
    model/      the vocabulary (policy, config, calendar, statistics, roles, ...): privacy/ only
    store/      the one owner of SQL: the vocabulary and privacy/
    domain/     what Chorus does: the store, the vocabulary, privacy/; never a transport or front end
    root.py     the composition root: builds the domain services
    transport/  gRPC, its gate, servicers, OTLP/HTTP, metrics, logs, workers: anything below
    front/      what the CLI and the dashboard share as API clients: the vocabulary only
    verifier/   the offline verifier an auditor vendors: the vocabulary and privacy/ only
    cli/ dashboard/ demo/   the applications; the dashboard speaks to the server over its API only

The scan reads every server module's imports (`from chorus.server import x` counts as
chorus.server.x); `test_each_rule_catches_an_upward_import` proves each rule fails on a
fabricated upward import, so a rule cannot silently stop guarding.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "server" / "chorus" / "server"
PACKAGE = "chorus.server"

BELOW_DOMAIN = {"privacy", "model", "store"}
#: Each layer and the layers it may import (its own included).
MAY_IMPORT: dict[str, set[str]] = {
    "privacy": {"privacy"},
    "model": {"model", "privacy"},
    "store": {"store", "model", "privacy"},
    "domain": {"domain"} | BELOW_DOMAIN,
    "root": {"root", "domain"} | BELOW_DOMAIN,
    "transport": {"transport", "root", "domain"} | BELOW_DOMAIN,
    "front": {"front", "model", "privacy"},
    "verifier": {"verifier", "model", "privacy"},
    # The dashboard is a separate process calling the API with the signed-in user's identity.
    "dashboard": {"dashboard", "front", "verifier", "model", "privacy"},
    "cli": {"cli", "dashboard", "demo", "front", "verifier", "transport", "root", "domain"} | BELOW_DOMAIN,
    "demo": {"demo", "cli", "front", "transport", "root", "domain"} | BELOW_DOMAIN,
    "package": {"package", "cli"},  # chorus.server itself and its `_entry` point
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer of `chorus.server.<folder>...`: its first folder (root.py is `root`)."""
    parts = module.split(".")
    if parts[:2] != ["chorus", "server"]:
        raise ValueError(f"{module} is not a server module")
    if len(parts) == 2 or parts[2] == "_entry":
        return "package"
    return parts[2]


def _imports(path: Path) -> set[str]:
    """Every chorus module a file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith(("chorus.", "tests.")) or m == "grpc" or m.startswith("grpc.")}


@functools.cache
def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """`importer -> imported (layer -> layer)` for every import the rules forbid."""
    out = []
    for module, imported in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(imported):
            if target == PACKAGE or not target.startswith(PACKAGE + "."):
                continue
            theirs = layer_of(target)
            if theirs not in MAY_IMPORT[mine]:
                out.append(f"{module} -> {target} ({mine} may not import {theirs})")
    return out


def test_every_server_module_sits_in_a_layer_folder() -> None:
    """A new module at the top of the package (or in an unknown folder) has no layer: it fails here."""
    assert sorted({m for m in _graph() if layer_of(m) not in MAY_IMPORT}) == []


def test_the_scan_sees_the_imports_it_judges() -> None:
    graph = _graph()
    assert "chorus.server.dashboard.pages" in graph and "chorus.server.transport.services.admin" in graph
    assert "chorus.server.front.statement" in graph["chorus.server.dashboard.pages"]
    assert "chorus.server.store" in graph["chorus.server.domain.ingest"]


def test_imports_point_down_only() -> None:
    assert violations(_graph()) == []


def test_each_rule_catches_an_upward_import() -> None:
    """For every layer, an import of each layer it may not import is reported."""
    layers = sorted(MAY_IMPORT)
    for mine in layers:
        module = "chorus.server" if mine == "package" else f"chorus.server.{mine}.m"
        for theirs in layers:
            target = "chorus.server._entry" if theirs == "package" else f"chorus.server.{theirs}.x"
            found = violations({module: {target}})
            assert bool(found) == (theirs not in MAY_IMPORT[mine]), (mine, theirs, found)


def test_the_dashboard_and_the_vocabulary_load_no_grpc_server_code() -> None:
    """The dashboard talks gRPC as a client only; the vocabulary and privacy/ import no gRPC."""
    for module, imported in _graph().items():
        if layer_of(module) in ("privacy", "model", "verifier"):
            assert not [m for m in imported if m == "grpc" or m.startswith("grpc.")], module


@pytest.mark.slow
def test_the_verifier_alone_loads_no_store_grpc_service_cli_or_dashboard_module() -> None:
    """An auditor can vendor the verifier: importing it in a fresh interpreter loads nothing of
    the running server, only the vocabulary and privacy/."""
    code = ("import json, sys\nimport chorus.server.verifier.verify\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('chorus', 'grpc')))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True, timeout=120).stdout)
    assert "chorus.server.verifier.verify" in loaded
    assert [m for m in loaded if m == "grpc" or m.startswith("grpc.")] == []
    server = [m for m in loaded if m.startswith(PACKAGE + ".")]
    assert [m for m in server if layer_of(m) not in MAY_IMPORT["verifier"]] == []


def test_servicers_never_open_a_transaction() -> None:
    """Servicers call domain services, whose methods run their own transactions: no servicer
    imports the store or touches a `db` (Database.run) itself, or receives the root object."""
    for path in sorted((ROOT / "transport" / "services").glob("*.py")):
        imported = _imports(path)
        server = [m for m in imported if m.startswith(PACKAGE + ".")]
        assert not [m for m in server if layer_of(m) in ("store", "root")], path
        tree = ast.parse(path.read_text(), str(path))
        assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("db", "_db")], path


def test_no_test_folder_imports_another_folders_conftest() -> None:
    """Builders shared across test folders live in `tests/_*.py`; a conftest serves its own folder."""
    tests = ROOT.parents[2] / "tests"
    found = []
    for path in sorted(tests.rglob("*.py")):
        for module in _imports(path):
            if module.startswith("tests.") and ".conftest" in module + "." and \
                    module.split(".conftest")[0] != ".".join(path.relative_to(tests.parent).parts[:-1]):
                found.append(f"{path.relative_to(tests.parent)} imports {module}")
    assert found == []


def test_each_layer_folder_states_what_it_may_import_in_its_docstring() -> None:
    """docs/architecture.md: each folder's `__init__.py` states its rule in its docstring."""
    for folder in ("privacy", "model", "store", "domain", "transport", "front", "verifier"):
        text = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text())) or ""
        assert "import" in text.lower(), folder
