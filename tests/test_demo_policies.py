"""The suite sees its own copy of the demo policies, whatever an operator does to ``policies/``.

README invites a DPO to edit ``policies/`` and reload; the tests must still pass afterwards,
in a git checkout or an unpacked tree alike. The proof runs part of the suite in a copy of
this tree whose ``policies/`` has been edited as a DPO would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.policy import load_policies
from tests.dataset_policies import DEMO_POLICIES
from tests.live_server import ROOT

# Tests that read the demo policies directly or through the conftest fixtures (the
# loader's property tests are left out: they read no policy files).
_SUITES = [
    "tests/policy/test_policy_loader.py::test_demo_policies_load",
    "tests/policy/test_policy_loader.py::test_demo_uk_dataset_is_the_design_example",
    "tests/policy/test_policy_loader.py::test_demo_partners_read_as_design_example_with_an_expired_grant",
    "tests/policy/test_grants.py",
    "tests/policy/test_policy_changes.py",
    "tests/api/test_api_datasets.py",
]
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "var",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
)


def test_the_tests_copy_is_a_valid_policy_set() -> None:
    policies = load_policies(DEMO_POLICIES)

    assert sorted(policies.datasets) == ["be-helpline-2024", "nl-helpline-2024", "uk-helpline-2024"]
    assert DEMO_POLICIES.resolve() != (ROOT / "policies").resolve()


@pytest.mark.slow
def test_editing_the_working_trees_policies_leaves_the_suite_green(tmp_path: Path) -> None:
    tree = tmp_path / "dpx"
    shutil.copytree(ROOT, tree, ignore=_NOT_COPIED)
    # What README suggests a DPO do: raise a grant, drop a partner, add a dataset dimension.
    partner = tree / "policies" / "partners" / "no-police.yaml"
    text = partner.read_text()
    assert "budget: {epsilon: 2.0}" in text
    partner.write_text(text.replace("budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}", 1))
    (tree / "policies" / "partners" / "research-uni.yaml").unlink()
    dataset = tree / "policies" / "datasets" / "uk-helpline-2024.yaml"
    text = dataset.read_text()
    assert "\ndimensions:\n" in text
    dataset.write_text(
        text.replace("\ndimensions:\n", "\ndimensions:\n  age: {values: [u18, adult]}\n")
    )
    load_policies(tree / "policies")  # still a valid set: only its values changed
    environment = {
        k: v
        for k, v in os.environ.items()
        if k == "DPX_TEST_DATABASE_URL" or not k.startswith(("DPX_", "PYTEST"))
    }

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *_SUITES],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
