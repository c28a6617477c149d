"""The synopsis section of a dataset policy: what loads, what is refused, what a review shows."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from service.policy import load_policies
from service.policy.changes import policy_changes
from tests.policy.test_policy_loader import DEMO_POLICIES, A, broken_set, refusal

SYNOPSIS_A = """measures:
  minutes: {min: 0, max: 60}
synopsis:
  marginals:
    - [month, channel]
    - [channel]
  budget: {epsilon: 1.0}
"""


def _with_synopsis(directory: Path, old: str, new: str, file: str = A) -> Path:
    """The minimal set with the synopsis above, ``old`` replaced by ``new`` in it."""
    section = SYNOPSIS_A.replace(old, new, 1) if old else new
    return broken_set(directory, file, "measures:\n  minutes: {min: 0, max: 60}\n", section)


def test_a_declared_synopsis_loads_with_marginals_in_policy_order(tmp_path: Path) -> None:
    directory = _with_synopsis(tmp_path, "[month, channel]", "[channel, month]")
    synopsis = load_policies(directory).datasets["alpha"].synopsis
    assert synopsis is not None
    assert synopsis.marginals == (("month", "channel"), ("channel",))
    assert synopsis.budget == Fraction(1)


def test_the_demo_nl_dataset_declares_a_synopsis() -> None:
    synopsis = load_policies(DEMO_POLICIES).datasets["nl-helpline-2024"].synopsis
    assert synopsis is not None and synopsis.budget == Fraction(1, 2)
    assert ("month", "referral_source") in synopsis.marginals


CASES = [
    pytest.param(
        "[month, channel]", "[month, region]",
        f"{A}:synopsis.marginals.0: 'region' is not a dimension of this dataset (month, channel)",
        id="unknown-dimension",
    ),
    pytest.param(
        "[month, channel]", "[month, month]",
        f"{A}:synopsis.marginals.0: duplicate dimension 'month'",
        id="repeated-dimension",
    ),
    pytest.param(
        "[channel]", "[channel, month]",
        f"{A}:synopsis.marginals.1: repeats marginals.0 (order does not matter)",
        id="repeated-marginal",
    ),
    pytest.param(
        "[month, channel]", "[]",
        f"{A}:synopsis.marginals.0: must list at least one dimension",
        id="empty-marginal",
    ),
    pytest.param(
        "  marginals:\n    - [month, channel]\n    - [channel]\n", "  marginals: []\n",
        f"{A}:synopsis.marginals: must list at least one marginal",
        id="no-marginals",
    ),
    pytest.param(
        "{epsilon: 1.0}", "{rho: 1.0}",
        f"{A}:synopsis.budget: a pure dataset counts its budget in epsilon, not rho",
        id="unit-mismatch",
    ),
    pytest.param(
        "{epsilon: 1.0}", "{epsilon: 4.5}",
        f"{A}:synopsis.budget: epsilon 4.5 is more than the dataset's global budget of 4",
        id="above-global-budget",
    ),
    pytest.param(
        "  budget: {epsilon: 1.0}\n", "",
        f"{A}:synopsis.budget: required field is missing",
        id="missing-budget",
    ),
    pytest.param(
        "  budget: {epsilon: 1.0}\n", "  budget: {epsilon: 1.0}\n  workload: []\n",
        f"{A}:synopsis.workload: unknown field; expected one of: marginals, budget",
        id="unknown-key",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "expected"), CASES)
def test_a_broken_synopsis_is_refused_with_file_field_and_reason(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert refusal(_with_synopsis(tmp_path, old, new)) == [expected]


def test_check_policies_shows_a_changed_synopsis(tmp_path: Path) -> None:
    deployed = load_policies(DEMO_POLICIES)
    target = tmp_path / "proposed"
    shutil.copytree(DEMO_POLICIES, target)
    path = target / "datasets" / "nl-helpline-2024.yaml"
    text = path.read_text()
    path.write_text(
        text.replace("  budget: {rho: 0.5}", "  budget: {rho: 0.25}").replace(
            "    - [channel, referral_source]\n", ""
        )
    )
    changes = [str(change) for change in policy_changes(deployed, load_policies(target))]
    assert changes == [
        "~ dataset nl-helpline-2024: synopsis.marginals [month, channel]; [month, "
        "referral_source]; [channel, referral_source] -> [month, channel]; [month, "
        "referral_source]",
        "~ dataset nl-helpline-2024: synopsis.budget rho 0.5 -> rho 0.25",
    ]
