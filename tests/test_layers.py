"""Layers point one way (docs/architecture.md, "Layers"): a scan of every server module's
imports, and the offline verifier imported alone in a fresh interpreter.

Rules, from the bottom up: the vocabulary and format modules (statistics, roles, the ledger
format, rpc_errors, presentation) import no servicer, front end or store; domain code never
imports a servicer, the gRPC wiring or a front end; servicers import no front end; the
dashboard never imports the CLI (what both show lives in `presentation`); and the verifier an
auditor runs offline imports only the ledger format, the policy, `Epsilon` and the vocabulary.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "server" / "chorus" / "server"
PACKAGE = "chorus.server"

FRONT_ENDS = ("chorus.server.cli", "chorus.server.dashboard", "chorus.server.demo", "chorus.server._entry")
SERVICES = ("chorus.server.services",)
#: The gRPC server and OTLP/HTTP listener, the gate and the RPC metrics: they wire servicers in.
WIRING = ("chorus.server.grpc_server", "chorus.server.workers", "chorus.server.gate", "chorus.server.metrics",
          "chorus.server.otlp.http")
#: What the offline verifier may import of the server (directly or not); everything else of
#: `chorus.server` (store, services, gRPC wiring, domain services, front ends) is out.
VERIFIER_MAY_IMPORT = ("chorus.server.verify", "chorus.server.policy", "chorus.server.ledger_format",
                       "chorus.server.statistics", "chorus.server.calendar", "chorus.server.privacy",
                       "chorus.server.otlp.mapping",
                       # the organisation tree of window_close entries (pure, standard library only)
                       "chorus.server.hierarchy")
#: Packages the verifier loads only for their `__init__` (the policy's [otlp] section).
VERIFIER_MAY_LOAD = ("chorus.server.otlp",)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every chorus module a file imports (`from chorus.server import x` counts as chorus.server.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("chorus.") or m == "grpc" or m.startswith("grpc.")}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _violations(importers: tuple[str, ...] | None, forbidden: tuple[str, ...],
                exempt: tuple[str, ...] = ()) -> list[str]:
    """`importer -> imported` pairs where a module in `importers` (None: any module not in
    `exempt`) imports one in `forbidden`."""
    out = []
    for module, imported in _graph().items():
        chosen = _within(module, importers) if importers is not None else not _within(module, exempt)
        if chosen and not _within(module, forbidden):
            out += [f"{module} -> {m}" for m in sorted(imported) if _within(m, forbidden)]
    return out


def test_the_scan_sees_the_imports_it_judges() -> None:
    graph = _graph()
    assert "chorus.server.dashboard.pages" in graph and "chorus.server.services.admin" in graph
    assert "chorus.server.presentation.statement" in graph["chorus.server.dashboard.pages"]


def test_domain_code_imports_no_servicer_wiring_or_front_end() -> None:
    assert _violations(None, SERVICES + WIRING + FRONT_ENDS, exempt=SERVICES + WIRING + FRONT_ENDS) == []


def test_servicers_and_the_gate_import_no_front_end() -> None:
    assert _violations(SERVICES + WIRING, FRONT_ENDS) == []


def test_the_gate_imports_no_servicer() -> None:
    assert _violations(("chorus.server.gate", "chorus.server.rpc_errors", "chorus.server.roles"), SERVICES) == []


def test_the_dashboard_imports_neither_the_cli_nor_server_internals() -> None:
    inside = ("chorus.server.store", "chorus.server.gate", "chorus.server.grpc_server", *SERVICES, "chorus.server.cli")
    assert _violations(("chorus.server.dashboard",), inside) == []


def test_shared_vocabulary_and_presentation_sit_below_everything_that_uses_them() -> None:
    below = ("chorus.server.statistics", "chorus.server.roles", "chorus.server.ledger_format",
             "chorus.server.rpc_errors", "chorus.server.presentation", "chorus.server.paging")
    above = ("chorus.server.store", "chorus.server.tokens", "chorus.server.ledger", "chorus.server.window_store",
             "chorus.server.audit", "chorus.server.release", "chorus.server.ingest", *SERVICES, *WIRING, *FRONT_ENDS)
    assert _violations(below, above) == []


def test_the_verifier_imports_only_the_format_the_policy_and_epsilon() -> None:
    direct = {m for m in _imports(ROOT / "verify.py") if m.startswith(PACKAGE + ".")}
    assert {m for m in direct if not _within(m, VERIFIER_MAY_IMPORT)} == set()


def test_the_verifier_alone_loads_no_store_grpc_service_cli_or_dashboard_module() -> None:
    """An auditor can vendor the verifier: importing it in a fresh interpreter loads nothing of
    the running server."""
    code = ("import json, sys\nimport chorus.server.verify\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('chorus', 'grpc')))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True, timeout=120).stdout)
    assert "chorus.server.verify" in loaded
    banned = ("grpc", "chorus.server.store", "chorus.server.services", "chorus.server.cli",
              "chorus.server.dashboard")
    assert [m for m in loaded if _within(m, banned)] == []
    server = [m for m in loaded if m.startswith(PACKAGE + ".")]
    assert [m for m in server if not _within(m, VERIFIER_MAY_IMPORT) and m not in VERIFIER_MAY_LOAD] == []


def test_servicers_never_open_a_transaction() -> None:
    """Servicers call domain services, whose methods run their own transactions: no servicer
    imports the store or touches a `db` (Database.run) itself, or receives the root object."""
    for path in sorted((ROOT / "services").glob("*.py")):
        imported = _imports(path)
        assert not [m for m in imported if _within(m, ("chorus.server.store", "chorus.server.root"))], path
        tree = ast.parse(path.read_text(), str(path))
        assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("db", "_db")], path
