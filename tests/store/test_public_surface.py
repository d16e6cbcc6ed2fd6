"""The store's public surface: every module outside `chorus.server.store` (server, tests, benches)
imports `Database`, `Tx`, `StoreUnavailable` and `deadline` from the package, never the engines'
seam `store._db`, so the seam can change behind it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "server" / "chorus" / "server" / "store"


def test_no_module_outside_the_store_imports_its_seam() -> None:
    found = []
    for folder in ("server", "client", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if STORE in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(ROOT)} imports {n}" for n in names
                          if n.startswith("chorus.server.store._db")]
    assert found == []
