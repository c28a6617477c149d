"""dpx commands for DPOs: budget reports and policy checks."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping
from datetime import date
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from service.auth.registry import Principal
from service.cli import deployment, fail, friendly, main, settings
from service.database.engine import Database
from service.database.migrate import NotInitialised, require_current
from service.ledger.budgets import Ledger
from service.policy.changes import review
from service.policy.errors import PolicyError, PolicySetError
from service.policy.loader import load_policies
from service.policy.model import PolicySet
from service.store.bounds import stored_data_defects

REPORT_COLUMNS = (
    "dataset",
    "partner",
    "unit",
    "granted",
    "spent",
    "remaining",
    "expires",
    "dataset_global",
    "dataset_spent",
    "dataset_remaining",
)
NO_POLICIES = PolicySet(
    datasets=MappingProxyType({}), partners=MappingProxyType({}), version="none"
)


@main.command("budget-report")
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@friendly
def budget_report(form: str) -> None:
    """Granted, spent and remaining budget per dataset and partner, with each dataset's
    global budget and spend: the numbers of GET /v1/budgets for a DPO."""
    # The CLI runs with the deployment's own keyring and database: it reads as a DPO would.
    dpo = Principal(token_id="cli", role="dpo", subject=None)  # noqa: S106 - an id, no secret
    with deployment() as c:
        budgets = c.exchange.budgets(dpo)
    rows = sorted(budgets, key=lambda r: (r["dataset"], r["partner"]))
    if form == "json":
        click.echo(json.dumps([{c: row[c] for c in REPORT_COLUMNS} for row in rows], indent=2))
    elif form == "csv":
        writer = csv.DictWriter(
            sys.stdout, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    else:
        console = Console()
        if not console.is_terminal:
            # Piped or redirected: no screen to fit, so never cut a dataset or partner id.
            console.width = max(console.width, 160)
        console.print(_budget_table(rows))


def _budget_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Privacy budgets (spent from the ledger; red: spent, dim: expired)")
    for header in (
        "Dataset",
        "Partner",
        "Unit",
        "Granted",
        "Spent",
        "Remaining",
        "Expires",
        "Global budget",
        "Global spent",
    ):
        numeric = header not in ("Dataset", "Partner", "Unit", "Expires")
        table.add_column(
            header, justify="right" if numeric else "left", no_wrap=header in ("Dataset", "Partner")
        )
    today = date.today().isoformat()
    for row in rows:
        expired = row["expires"] is not None and row["expires"] < today
        style = "dim" if expired else "bold red" if row["remaining"] <= 0 else None
        table.add_row(
            row["dataset"],
            row["partner"],
            row["unit"],
            f"{row['granted']:g}",
            f"{row['spent']:g}",
            f"{row['remaining']:g}",
            row["expires"] or "never",
            f"{row['dataset_global']:g}",
            f"{row['dataset_spent']:g}",
            style=style,
        )
    return table


@main.command("check-policies")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--against",
    type=click.Path(file_okay=False, path_type=Path),
    help="the deployed policy directory to compare with [default: DPX_POLICY_DIR]",
)
@click.option(
    "--strict",
    is_flag=True,
    help="also fail when a budget would already be over-spent (or the ledger cannot be read)",
)
@friendly
def check_policies(directory: Path | None, against: Path | None, strict: bool) -> None:
    """Validate a policy set (default: DPX_POLICY_DIR) and show what it would change.

    Lists every grant and budget that differs from the deployed set and every budget the
    ledger has already spent past. Exits 1 when a file is invalid, a bound is below what
    stored batches were stored under or a definition differs from the one a dataset's
    charges were made in (one file:field: reason line each on standard error) and, with
    --strict, when anything would be over-spent.
    """
    current = settings()
    proposed_dir = directory or current.policy_dir
    deployed_dir = against or current.policy_dir
    try:
        proposed = load_policies(proposed_dir)
    except PolicySetError as refused:
        for defect in refused.errors:
            click.echo(str(defect), err=True)
        fail(f"{proposed_dir}: {len(refused.errors)} defect(s); this set would be refused")
        return
    defects = _stored_data_defects(current.database_url, proposed)
    if defects:
        for defect in defects:
            click.echo(str(defect), err=True)
        fail(
            f"{proposed_dir}: {len(defects)} change(s) that stored batches or charges rule out; "
            "this set would be refused"
        )
        return
    click.echo(
        f"valid: {proposed_dir} ({len(proposed.datasets)} datasets, "
        f"{len(proposed.partners)} partners, version {proposed.version[:19]})"
    )
    try:
        deployed = load_policies(deployed_dir)
    except PolicySetError:
        click.echo(
            f"warning: the deployed set in {deployed_dir} does not validate; "
            "comparing with no policies",
            err=True,
        )
        deployed = NO_POLICIES
    spent = _ledger_spent(current.database_url)
    result = review(deployed, proposed, spent or {})
    click.echo(f"changes against {deployed_dir}:")
    for change in result.changes:
        click.echo(f"  {change}")
    if not result.changes:
        click.echo("  none")
    if spent is None:
        click.echo(
            "warning: the ledger cannot be read (run dpx init?); over-spending is not checked",
            err=True,
        )
    elif result.over_spent:
        click.echo("already over-spent according to the ledger:")
        for over in result.over_spent:
            click.echo(f"  ! {over}")
    if strict and (spent is None or result.over_spent):
        fail(
            "--strict: budgets would be over-spent"
            if spent is not None
            else "--strict: the ledger cannot be read"
        )


def _existing_database(url: str) -> Database | None:
    """The deployment's database, or None when its SQLite file does not exist yet: checking
    files must not create an empty database as a side effect. ``NotInitialised`` when it
    exists without the current schema."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return None
    database = Database(url)
    try:
        require_current(database)
    except (NotInitialised, SQLAlchemyError):
        database.dispose()
        raise
    return database


def _stored_data_defects(url: str, proposed: PolicySet) -> list[PolicyError]:
    """Bounds of ``proposed`` narrower than stored batches hold, and definitions other than
    the charges were made in (none without a database)."""
    database = _existing_database(url)
    if database is None:
        return []  # no database, so no stored data
    try:
        return stored_data_defects(database, proposed)
    finally:
        database.dispose()


def _ledger_spent(url: str) -> Mapping[tuple[str, str], Fraction] | None:
    """The ledger's spend per account, or None when there is no readable ledger."""
    try:
        database = _existing_database(url)
    except SQLAlchemyError:
        return None
    if database is None:
        return None
    try:
        return Ledger(database).all_spent()
    except SQLAlchemyError:
        return None
    finally:
        database.dispose()
