"""dpx init and demo-data: what they did, in words an operator understands; and what any
command says when the database is not one ``dpx init`` set up."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import main
from service.config import Settings
from tests.cli.test_cli_tokens import dpx


def test_demo_data_explains_the_contacts_the_person_bound_dropped(settings: Settings) -> None:
    result = dpx(settings, "demo-data", "--dataset", "uk-helpline-2024", "--contacts", "2000")

    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert re.fullmatch(
        r"stored synthetic batch \S+ in uk-helpline-2024: \d+ contacts, \d+ cells; "
        r"\d+ contacts dropped by the person bound \(a person's contacts beyond "
        r"max_contacts_per_person = 10, the bound the privacy guarantee relies on\)",
        line,
    ), line


def dpx_on(settings: Settings, url: str, *args: str) -> Result:
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    return CliRunner().invoke(main, list(args), env=env)


def one_line(result: Result) -> str:
    """The one readable line of a command that failed as misuse: exit 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    [line] = result.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "garbage://",
        "postgresql+nodriver://dpx:s3cret@db.example/dpx",
        "mysql://dpx:s3cret@db.example/dpx",
        "postgresql://dpx:s3cret@db.example:abc/dpx",
    ],
)
def test_a_malformed_database_url_is_one_line_that_names_the_variable_not_the_url(
    settings: Settings, url: str
) -> None:
    line = one_line(dpx_on(settings, url, "issue-token", "--dpo"))
    assert line.startswith("Error: DPX_DATABASE_URL: not a database URL dpx can use: ")
    assert "s3cret" not in line


def test_a_command_before_dpx_init_says_so_and_creates_no_database(
    settings: Settings, tmp_path: Path
) -> None:
    fresh = tmp_path / "later" / "dpx.sqlite3"
    url = f"sqlite:///{fresh}"
    line = one_line(dpx_on(settings, url, "issue-token", "--dpo"))
    assert line == f"Error: no database at {fresh}: run `dpx init` first"
    assert not fresh.exists()

    assert dpx_on(settings, url, "init").exit_code == 0
    assert dpx_on(settings, url, "issue-token", "--dpo").exit_code == 0


@pytest.mark.parametrize("command", ["budget-report", "check-policies"])
def test_a_command_on_a_database_without_the_schema_says_to_run_init(
    settings: Settings, tmp_path: Path, command: str
) -> None:
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    line = one_line(dpx_on(settings, f"sqlite:///{empty}", command))
    assert line == (
        "Error: the database does not carry this dpx's schema: run `dpx init` to create or "
        "upgrade it"
    )


def test_check_policies_without_a_database_checks_the_files_and_creates_none(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "not-yet.sqlite3"
    result = dpx_on(settings, f"sqlite:///{missing}", "check-policies")
    assert result.exit_code == 0, result.output
    assert not missing.exists()
