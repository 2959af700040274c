"""Project rules as checks: edge never loads cloud code, the edge install stays small."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_SITE, REPO, with_its_files


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "edge").rglob("*.py")), ids=lambda p: p.name)
def test_edge_never_imports_cloud(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m == "cloud" or m.startswith("cloud.")}
    assert not bad, f"{path} imports {bad}"


def test_floodgate_edge_loads_no_cloud_code(tmp_path: Path) -> None:
    site = str(with_its_files(EXAMPLE_SITE, tmp_path))
    banned = ("cloud.", "fastapi", "sqlalchemy", "simulators")
    probe = (
        "import sys; from floodgate.cli import main; "
        f"rc = main(['edge', 'check-config', {site!r}]); "
        f"bad = sorted(m for m in sys.modules if m == 'cloud' or m.startswith({banned!r})); "
        "print('LOADED', bad); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout


def test_edge_extra_has_no_web_framework_or_orm() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["edge"]
    names = {d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].lower() for d in deps}
    assert not names & {
        "fastapi",
        "starlette",
        "flask",
        "django",
        "sqlalchemy",
        "uvicorn",
        "psycopg",
    }
    assert all(any(op in d for op in (">=", "==", "~=")) and "<" in d for d in deps), "pin ranges"


# The collector's SQL lives in cloud/db/ alone: its schema, migrations, the store and the
# repositories. Elsewhere in cloud/ no database library is imported, no SQL is written (in any
# string but a docstring), and no connection or engine is driven directly.
DB_PACKAGE = REPO / "cloud" / "db"
DB_LIBRARIES = {"sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2"}
SQL = re.compile(
    r"\bSELECT\b.*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\b(CREATE|ALTER|DROP)\s+(TABLE|INDEX)\b|\bON\s+CONFLICT\b|\bpg_advisory|\bSAVEPOINT\b|\bBEGIN\s+IMMEDIATE\b",
    re.S,
)
DRIVING = {"engine", "execute", "executemany", "exec_driver_sql", "begin_nested", "get_raw_connection"}


def database_reaches(source: str) -> list[str]:
    """What in ``source`` speaks to the database itself: imports, SQL in strings, driving calls."""
    tree = ast.parse(source)
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    found: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found += [f"import {a.name}" for a in n.names if a.name.split(".")[0] in DB_LIBRARIES]
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in DB_LIBRARIES:
            found.append(f"from {n.module} import …")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            if SQL.search(n.value):
                found.append(f"SQL at line {n.lineno}: {n.value[:60]!r}")
        elif isinstance(n, ast.Attribute) and n.attr in DRIVING:
            found.append(f".{n.attr} at line {n.lineno}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO / "cloud").rglob("*.py") if DB_PACKAGE not in p.parents),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_only_cloud_db_speaks_sql(path: Path) -> None:
    assert not database_reaches(path.read_text(encoding="utf-8")), (
        f"{path.relative_to(REPO)}: put it in a cloud/db/ repository"
    )


def test_the_sql_rule_sees_what_it_forbids() -> None:
    """The check itself finds each kind of reach (and lets a docstring speak of SQL)."""
    assert database_reaches('"""Rows go in by INSERT INTO readings; SELECT a FROM b."""\n') == []
    assert database_reaches("def f():\n    'DELETE FROM x'\n") == []
    for source in (
        "import sqlalchemy\n",
        "from sqlalchemy.ext.asyncio import AsyncConnection\n",
        "import asyncpg\n",
        "q = 'SELECT id FROM tickets WHERE node = ?'\n",
        "q = f'INSERT INTO {t} (a) VALUES (1)'\n",
        "q = 'UPDATE nodes SET online = false'\n",
        "q = 'SELECT pg_advisory_xact_lock(1)'\n",
        "async def f(store):\n    async with store.engine.begin() as c:\n        await c.execute(q)\n",
    ):
        assert database_reaches(source), source


def test_no_file_holds_a_merge_conflict() -> None:
    """A rebase once left conflict markers in docs/architecture.md, and nothing noticed."""
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    held = []
    for name in filter(None, tracked):
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".ttf", ".woff2", ".pdf"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        held += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in marker.finditer(text)]
    assert not held, f"merge conflict markers: {held}"
