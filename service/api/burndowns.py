"""The dashboard's burn-downs: each account's budget remaining over time, as it was.

Charges come from the ledger's history; budget changes from the ``policy.reload`` audit
entries, which list every budget a reload changed. Replaying both in time order draws each
grant (and each dataset's global cap) against the budget in force at every moment, so a
policy change does not redraw the past against today's grant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from markupsafe import Markup

from service.api.charts import StepLine, burndown_chart
from service.audit.log import AuditLog
from service.dp.accounting import remaining_budget
from service.ledger.budgets import ChargeLine
from service.policy.changes import GLOBAL
from service.policy.model import PolicySet


def exact_budgets(policies: PolicySet) -> dict[tuple[str, str], Fraction]:
    """Every grant's budget by (dataset, partner), and each dataset's global budget by
    (dataset, ``GLOBAL``), exactly as the policies state them."""
    exact = {(d.id, GLOBAL): d.global_budget for d in policies.datasets.values()}
    for partner in policies.partners.values():
        for grant in partner.grants:
            exact[(grant.dataset, partner.id)] = grant.budget
    return exact


def burndown_charts(
    budgets: Sequence[dict[str, Any]],
    exact: Mapping[tuple[str, str], Fraction],
    history: Sequence[ChargeLine],
    changes: Sequence[BudgetChange],
    now: datetime,
    *,
    with_global: bool,
) -> list[Markup]:
    """One burn-down chart per dataset: each grant's remaining budget (and the global cap's),
    each drawn against the budget in force at the time, as the policy changes set it.

    ``budgets`` are the report's rows (for labels); ``exact`` holds the budgets the lines are
    computed from, so that no step goes through a float before it is drawn."""
    start = window_start(history, now)
    charts = []
    for dataset in sorted({row["dataset"] for row in budgets}):
        rows = [row for row in budgets if row["dataset"] == dataset]
        unit = rows[0]["unit"]
        spend = [line for line in history if line.dataset == dataset]
        lines = []
        if with_global:
            lines.append(
                _burndown(
                    f"global cap {rows[0]['dataset_global']:g}",
                    exact.get((dataset, GLOBAL), Fraction(0)),
                    spend,
                    [c for c in changes if c.dataset == dataset and c.partner == GLOBAL],
                )
            )
        for row in rows:
            own = [line for line in spend if line.partner == row["partner"]]
            moves = [c for c in changes if c.dataset == dataset and c.partner == row["partner"]]
            lines.append(
                _burndown(
                    f"{row['partner']} (grant {row['granted']:g})",
                    exact.get((dataset, row["partner"]), Fraction(0)),
                    own,
                    moves,
                )
            )
        charts.append(
            Markup(  # noqa: S704 - charts.py escapes all text
                burndown_chart(
                    lines, start=start, end=now, title=f"{dataset}: {unit} remaining", unit=unit
                )
            )
        )
    return charts


def window_start(history: Sequence[ChargeLine], now: datetime) -> datetime:
    """From a little before the first charge, so that the first step is visible; a day
    back when nothing was charged yet."""
    if not history:
        return now - timedelta(days=1)
    span = max(now - history[0].created_at, timedelta(minutes=1))
    return history[0].created_at - span / 10


@dataclass(frozen=True)
class BudgetChange:
    """A budget set anew by a policy reload: ``old`` until ``at``, ``new`` from then on."""

    at: datetime
    dataset: str
    partner: str
    old: Fraction
    new: Fraction


def budget_changes_since(audit: AuditLog, since: datetime) -> list[BudgetChange]:
    """The budget changes of every policy reload since ``since``, oldest first (an absent
    budget counts as 0: nothing could be spent against it)."""
    found = []
    for entry in audit.entries(since=since):
        if entry.action != "policy.reload":
            continue
        for change in entry.details.get("budgets", ()):
            found.append(
                BudgetChange(
                    entry.at if entry.at.tzinfo else entry.at.replace(tzinfo=UTC),
                    change["dataset"],
                    change["partner"],
                    Fraction(change["from"] or 0),
                    Fraction(change["to"] or 0),
                )
            )
    return found


def _burndown(
    label: str, budget: Fraction, spend: Iterable[ChargeLine], changes: Sequence[BudgetChange]
) -> StepLine:
    """Remaining budget over time: down at each charge, and by the difference at each change
    of the budget, starting from the budget in force before the first change shown."""
    initial = budget - sum((c.new - c.old for c in changes), Fraction(0))
    events: list[tuple[datetime, Fraction, Fraction]] = [
        (line.created_at, -line.amount, Fraction(0)) for line in spend
    ]
    events += [(c.at, Fraction(0), c.new - c.old) for c in changes]
    granted, spent = initial, Fraction(0)
    steps = []
    for at, charge, move in sorted(events, key=lambda event: event[0]):
        spent -= charge
        granted += move
        steps.append((at, float(remaining_budget(granted, spent))))
    return StepLine(label, float(remaining_budget(initial, Fraction(0))), steps)
