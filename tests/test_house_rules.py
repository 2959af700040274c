"""Project rules as checks: edge never loads cloud code, the edge install stays small."""

from __future__ import annotations

import ast
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
