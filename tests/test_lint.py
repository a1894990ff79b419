"""Lint is part of the suite: ruff with the rules in pyproject.toml, and no declared dependency unused."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("services", "trainer", "bench", "tests", "scripts")

# Dependencies that are used without an import statement of ours, and by what.
USED_WITHOUT_IMPORT = {
    "asyncpg": "SQLAlchemy's postgresql+asyncpg dialect, named in database URLs",
    "aiosqlite": "SQLAlchemy's sqlite+aiosqlite dialect, the embedded default",
    "python-multipart": "FastAPI's form and file parsing (the files API)",
}


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_tree_is_lint_clean():
    result = _ruff("check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix .`):\n{result.stdout}"


def test_lint_rules_catch_what_they_should(tmp_path):
    """The configured rule set really flags an unused import, bad import order and a bugbear finding."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\n\ndef f(x=[]):\n    return os.sep, x\n")
    result = _ruff("check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad))
    assert result.returncode == 1
    for code in ("F401", "I001", "B006"):
        assert code in result.stdout, result.stdout


def _imported_top_level_names() -> set[str]:
    names: set[str] = set()
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_declared_dependency_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_distribution(r) for r in project["dependencies"]}
    by_module = packages_distributions()  # import name -> distributions providing it
    imported_dists = {d.lower().replace("_", "-") for name in _imported_top_level_names()
                      for d in by_module.get(name, [])}
    unused = sorted(declared - imported_dists - set(USED_WITHOUT_IMPORT))
    assert not unused, f"declared in pyproject.toml but never imported: {unused} (remove them, or use them)"
