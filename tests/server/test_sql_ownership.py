"""store/ is the one owner of SQL: no string literal outside server/chorus/server/store/ reads
like a SQL statement, and no module outside it calls a transaction's execute/query itself.

docs/architecture.md ("The store: one owner of SQL") promises this; the scan is of the
source's string literals (ast), so comments and docstrings that mention a table do not count,
while an f-string or a concatenation that builds a statement does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server" / "chorus" / "server"
STORE = SERVER / "store"
#: A statement's opening words, as a literal starts them (ignoring leading whitespace).
SQL = re.compile(r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|"
                 r"CREATE\s+(TEMP\s+|UNIQUE\s+)?(TABLE|INDEX)\s|ALTER\s+TABLE\s|DROP\s+TABLE\s|PRAGMA\s|"
                 r"COPY\s+\w+)", re.I | re.S)
#: The calls of `Tx` that run SQL text.
TX_CALLS = {"execute", "query", "executemany"}


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                lines.add(first.lineno)
    return lines


def sql_outside_store() -> list[str]:
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        if STORE in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        where = path.relative_to(SERVER.parent.parent)
        for line, text in _literals(tree):
            if line not in docs and SQL.match(text):
                found.append(f"{where}:{line}: {text.strip()[:60]!r}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in TX_CALLS and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "tx"):
                found.append(f"{where}:{node.lineno}: tx.{node.func.attr}(...)")
    return found


def test_no_sql_outside_the_store() -> None:
    assert sql_outside_store() == []


def test_the_scan_finds_sql_where_it_is() -> None:
    """The scan is not vacuous: it finds the store's own statements, which it skips elsewhere."""
    tree = ast.parse((STORE / "budgets.py").read_text())
    assert any(SQL.match(text) for _, text in _literals(tree))
    sample = ast.parse('def f(tx):\n    return tx.query(f"SELECT a FROM {t} WHERE b = ?", (1,))\n')
    assert "SELECT a FROM {} WHERE b = ?" in [text for _, text in _literals(sample) if SQL.match(text)]
