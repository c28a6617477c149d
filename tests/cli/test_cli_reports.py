"""dpx budget-report and dpx check-policies, as a DPO runs them."""

from __future__ import annotations

import csv
import io
import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import main
from service.cli.reports import REPORT_COLUMNS
from service.components import Components
from service.config import Settings

UK = "uk-helpline-2024"


def _env(settings: Settings) -> dict[str, str]:
    return {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "COLUMNS": "200",
    }


def _dpx(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env={**_env(settings), **env})


@pytest.fixture
def spent(components: Components) -> Components:
    """no-police has spent epsilon 0.5 of its 2 on the UK dataset."""
    with components.database.write() as conn:
        components.ledger.charge(
            conn,
            dataset=UK,
            partner="no-police",
            unit="epsilon",
            amount=Fraction(1, 2),
            partner_budget=Fraction(2),
            global_budget=Fraction(8),
        )
    return components


@pytest.fixture
def proposed(settings: Settings, tmp_path: Path) -> Path:
    """A copy of the deployed policies for the DPO to edit."""
    target = tmp_path / "proposed"
    shutil.copytree(settings.policy_dir, target)
    return target


def _set_no_police_budget(policies: Path, budget: str) -> None:
    path = policies / "partners" / "no-police.yaml"
    path.write_text(path.read_text().replace("budget: {epsilon: 2.0}", f"budget: {budget}"))


def test_budget_report_json_has_every_grant_with_spend_from_the_ledger(
    settings: Settings, spent: Components
) -> None:
    result = _dpx(settings, "budget-report", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == sum(len(p.grants) for p in spent.exchange.policies.partners.values())
    row = next(r for r in rows if (r["dataset"], r["partner"]) == (UK, "no-police"))
    assert row == {
        "dataset": UK,
        "partner": "no-police",
        "unit": "epsilon",
        "granted": 2.0,
        "spent": 0.5,
        "remaining": 1.5,
        "expires": "2027-06-30",
        "dataset_global": 8.0,
        "dataset_spent": 0.5,
        "dataset_remaining": 7.5,
    }
    other = next(r for r in rows if (r["dataset"], r["partner"]) == (UK, "interpol-sg"))
    assert (other["spent"], other["dataset_spent"]) == (0.0, 0.5)
    assert [(r["dataset"], r["partner"]) for r in rows] == sorted(
        (r["dataset"], r["partner"]) for r in rows
    )


def test_budget_report_csv_has_a_header_and_one_row_per_grant(
    settings: Settings, spent: Components
) -> None:
    result = _dpx(settings, "budget-report", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == REPORT_COLUMNS
    row = next(r for r in rows if (r["dataset"], r["partner"]) == (UK, "no-police"))
    assert (row["granted"], row["spent"], row["remaining"]) == ("2.0", "0.5", "1.5")


def test_budget_report_table_is_the_default(settings: Settings, spent: Components) -> None:
    result = _dpx(settings, "budget-report")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "no-police" in line and UK in line)
    assert [cell.strip() for cell in line.strip("│ ").split("│")] == [
        UK,
        "no-police",
        "epsilon",
        "2",
        "0.5",
        "1.5",
        "2027-06-30",
        "8",
        "0.5",
    ]


def test_check_policies_accepts_the_deployed_set_unchanged(
    settings: Settings, spent: Components
) -> None:
    result = _dpx(settings, "check-policies")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"valid: {settings.policy_dir}")
    assert "  none" in result.stdout


def test_check_policies_shows_a_raised_grant_with_its_spend(
    settings: Settings, spent: Components, proposed: Path
) -> None:
    _set_no_police_budget(proposed, "{epsilon: 3.0}")
    result = _dpx(settings, "check-policies", str(proposed), "--strict")
    assert result.exit_code == 0, result.output
    assert (
        f"  ~ grant no-police -> {UK}: budget epsilon 2 -> epsilon 3 (spent epsilon 0.5)"
        in result.stdout.splitlines()
    )


def test_check_policies_refuses_an_invalid_set_naming_file_field_and_reason(
    settings: Settings, proposed: Path
) -> None:
    _set_no_police_budget(proposed, "{epsilon: -1}")
    result = _dpx(settings, "check-policies", str(proposed))
    assert result.exit_code == 1
    assert any(
        line.startswith("partners/no-police.yaml:grants.0.budget")
        for line in result.stderr.splitlines()
    ), result.stderr
    assert "this set would be refused" in result.stderr


def test_check_policies_flags_over_spent_budgets_and_fails_with_strict(
    settings: Settings, spent: Components, proposed: Path
) -> None:
    _set_no_police_budget(proposed, "{epsilon: 0.25}")
    path = proposed / "partners" / "no-police.yaml"
    path.write_text(
        path.read_text().replace("max_per_query: {epsilon: 0.5}", "max_per_query: {epsilon: 0.25}")
    )
    relaxed = _dpx(settings, "check-policies", str(proposed))
    assert relaxed.exit_code == 0, relaxed.output
    assert (
        f"  ! grant no-police -> {UK}: epsilon 0.25 is less than the 0.5 already spent"
        in relaxed.stdout.splitlines()
    )
    strict = _dpx(settings, "check-policies", str(proposed), "--strict")
    assert strict.exit_code == 1
    assert "over-spent" in strict.stderr


def test_check_policies_compares_against_another_directory(
    settings: Settings, proposed: Path
) -> None:
    _set_no_police_budget(proposed, "{epsilon: 3.0}")
    result = _dpx(settings, "check-policies", str(settings.policy_dir), "--against", str(proposed))
    assert result.exit_code == 0, result.output
    assert (
        f"  ~ grant no-police -> {UK}: budget epsilon 3 -> epsilon 2 (spent epsilon 0)"
        in result.stdout.splitlines()
    )


def test_check_policies_without_a_ledger_validates_but_strict_fails(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "dpx.sqlite3"
    result = _dpx(settings, "check-policies", DPX_DATABASE_URL=f"sqlite:///{missing}")
    assert result.exit_code == 0, result.output
    assert "the ledger cannot be read" in result.stderr
    strict = _dpx(settings, "check-policies", "--strict", DPX_DATABASE_URL=f"sqlite:///{missing}")
    assert strict.exit_code == 1
    assert not missing.parent.exists()
