"""The layering rules of docs/DESIGN.md are import-linter contracts that CI enforces: the tree
keeps them, and a module that breaks one makes `lint-imports` fail, naming the contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run in ``root``, on the ``service`` package found there."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break on purpose."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "service",
        tmp_path / "service",
        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"),
    )
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("dp/leak.py", "import sqlalchemy\n", "dp/ and policy/ are pure domain code"),
        ("policy/leak.py", "from flask import request\n", "dp/ and policy/ are pure domain code"),
        ("api/leak.py", "from sqlalchemy import text\n", "api/ holds no SQL"),
        ("api/leak.py", "from service.store.batches import BatchStore\n", "api/ holds no SQL"),
        ("crypto/leak.py", "import service.exchange\n", "Lower layers never import upper ones"),
        ("store/leak.py", "from service.ledger import budgets\n", "Lower layers never import"),
    ],
)
def test_a_deliberate_violation_fails_naming_its_contract(
    tree: Path, module: str, source: str, contract: str
) -> None:
    (tree / "service" / module).write_text(source, encoding="utf-8")
    result = _lint(tree)
    assert result.returncode != 0
    assert "1 broken" in result.stdout
    report = result.stdout.split("Broken contracts", 1)[1]
    assert contract in report and f"service.{module[:-3].replace('/', '.')} ->" in report
