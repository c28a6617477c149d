"""Budget accounts in exact integer nano-units, charged atomically at two levels.

A charge raises the partner's spend on a dataset and the dataset's global spend in one
statement, a conditional upsert (``… DO UPDATE … WHERE spent + cost <= budget``): on SQLite
the write transaction holds the database lock (``BEGIN IMMEDIATE``), on PostgreSQL the
updated rows stay locked until commit. Either way two concurrent charges can never both
fit into the last unit of budget. Integer nano-units make sums exact: ten charges of
0.1 fit a budget of 1.0 and the eleventh does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, select, text

from service.database.engine import Database
from service.database.schema import budget_accounts, charges
from service.database.timestamps import as_utc
from service.dp.accounting import from_nano, remaining_budget, to_nano

GLOBAL = "*"

# The statements of every charge, built once: constructing a SQLAlchemy statement costs
# several times more than executing it, and these run on every release.
_ACCOUNTS = select(budget_accounts.c.partner, budget_accounts.c.spent_nano).where(
    budget_accounts.c.dataset == bindparam("dataset"),
    budget_accounts.c.partner.in_([bindparam("partner"), GLOBAL]),
)
_RECORD = charges.insert()


# Opens both accounts at ``cost``, or adds ``cost`` to each one whose limit it fits. A new
# account starts at 0, so the insert branch (which checks nothing) may only run when the cost
# alone fits both limits: the caller checks that first. Written as SQL because SQLAlchemy
# compiles a multi-row upsert anew on every execution (its form is not cached); this text is
# the same on SQLite and PostgreSQL.
_UPSERT = text(
    "INSERT INTO budget_accounts (dataset, partner, spent_nano) "
    "VALUES (:dataset, :partner, :cost), (:dataset, :global_account, :cost) "
    "ON CONFLICT (dataset, partner) DO UPDATE "
    "SET spent_nano = budget_accounts.spent_nano + :cost "
    "WHERE budget_accounts.spent_nano + :cost <= CASE "
    "WHEN budget_accounts.partner = :global_account THEN :global_limit ELSE :partner_limit END "
    "RETURNING partner, spent_nano"
).bindparams(bindparam("global_account", GLOBAL))


@dataclass(frozen=True)
class Remaining:
    """What is left after (or before) a charge, as exact amounts."""

    partner: Fraction
    dataset: Fraction


class ChargeLine(NamedTuple):
    """One committed charge, as the ledger recorded it (the time series of spend)."""

    created_at: datetime
    dataset: str
    partner: str
    amount: Fraction


class BudgetExhausted(Exception):
    """The charge does not fit; nothing was charged."""

    def __init__(self, unit: str, remaining: Remaining, scope: str) -> None:
        self.unit = unit
        self.remaining = remaining
        self.scope = scope
        which = "the partner's grant" if scope == "partner" else "the dataset's global budget"
        super().__init__(
            f"this query would exceed {which}: remaining {unit} is "
            f"{float(remaining.partner if scope == 'partner' else remaining.dataset):g}"
        )


class Ledger:
    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def _accounts(conn: Connection, dataset: str, partner: str) -> dict[str, int]:
        """Spend of the partner's account and of the global one (absent: never charged)."""
        rows = conn.execute(_ACCOUNTS, {"dataset": dataset, "partner": partner}).all()
        return {row.partner: int(row.spent_nano) for row in rows}

    def charge(
        self,
        conn: Connection,
        *,
        dataset: str,
        partner: str,
        unit: str,
        amount: Fraction,
        partner_budget: Fraction,
        global_budget: Fraction,
    ) -> Remaining:
        """Charge ``amount`` to both accounts inside ``conn``'s transaction, or raise.

        One statement charges both accounts: an upsert that opens an account on its first
        charge and otherwise adds the cost only where it stays within that account's limit.
        Both rows come back only if both fit. On ``BudgetExhausted`` the caller's
        transaction must be rolled back (the ``with`` block of ``Database.write`` does that
        when the exception propagates), which also undoes a half-applied charge.
        """
        cost = to_nano(amount)
        partner_limit, global_limit = to_nano(partner_budget), to_nano(global_budget)
        charged: dict[str, int] = {}
        if cost <= partner_limit and cost <= global_limit:
            parameters = {
                "dataset": dataset,
                "partner": partner,
                "cost": cost,
                "partner_limit": partner_limit,
                "global_limit": global_limit,
            }
            charged = {
                row.partner: int(row.spent_nano) for row in conn.execute(_UPSERT, parameters)
            }
        if len(charged) == 2:
            return Remaining(
                partner=remaining_budget(partner_budget, from_nano(charged[partner])),
                dataset=remaining_budget(global_budget, from_nano(charged[GLOBAL])),
            )
        spent = self._accounts(conn, dataset, partner)
        # An account charged by this statement carries the refused cost, which the
        # rollback removes: report what remains without it.
        for name in charged:
            spent[name] -= cost
        remaining = Remaining(
            partner=remaining_budget(partner_budget, from_nano(spent.get(partner, 0))),
            dataset=remaining_budget(global_budget, from_nano(spent.get(GLOBAL, 0))),
        )
        raise BudgetExhausted(
            unit, remaining, "partner" if amount > remaining.partner else "dataset"
        )

    def check(
        self,
        *,
        dataset: str,
        partner: str,
        unit: str,
        amount: Fraction,
        partner_budget: Fraction,
        global_budget: Fraction,
        within: Connection | None = None,
    ) -> Remaining:
        """What is left, or ``BudgetExhausted`` if ``amount`` does not fit now; writes nothing.

        A cheap look before any data is read, so that a request which cannot be paid does no
        data-dependent work. It decides nothing: only ``charge`` does, in the transaction
        that stores the release.
        """
        remaining = self.remaining(
            dataset=dataset,
            partner=partner,
            partner_budget=partner_budget,
            global_budget=global_budget,
            within=within,
        )
        if amount > remaining.partner:
            raise BudgetExhausted(unit, remaining, "partner")
        if amount > remaining.dataset:
            raise BudgetExhausted(unit, remaining, "dataset")
        return remaining

    @staticmethod
    def record(
        conn: Connection,
        *,
        release_id: str,
        dataset: str,
        partner: str,
        definition: str,
        amount: Fraction,
    ) -> None:
        """The ledger line of one charge, written in the charge's transaction."""
        conn.execute(
            _RECORD,
            {
                "dataset": dataset,
                "partner": partner,
                "release_id": release_id,
                "definition": definition,
                "amount_nano": to_nano(amount),
                "created_at": datetime.now(UTC),
            },
        )

    def remaining(
        self,
        *,
        dataset: str,
        partner: str,
        partner_budget: Fraction,
        global_budget: Fraction,
        within: Connection | None = None,
    ) -> Remaining:
        """What is left of a grant and of the dataset's global budget, read together."""
        with self.database.read(within) as conn:
            spent = self._accounts(conn, dataset, partner)
        return Remaining(
            partner=remaining_budget(partner_budget, from_nano(spent.get(partner, 0))),
            dataset=remaining_budget(global_budget, from_nano(spent.get(GLOBAL, 0))),
        )

    def spent(self, dataset: str, partner: str) -> Fraction:
        with self.database.read() as conn:
            return from_nano(self._accounts(conn, dataset, partner).get(partner, 0))

    def all_spent(self) -> Mapping[tuple[str, str], Fraction]:
        """Spend of every account, keyed by (dataset, partner); partner ``*`` is global."""
        with self.database.read() as conn:
            rows = conn.execute(select(budget_accounts)).all()
        return {(r.dataset, r.partner): from_nano(int(r.spent_nano)) for r in rows}

    def history(self, dataset: str | None = None, partner: str | None = None) -> list[ChargeLine]:
        """Every charge, oldest first, optionally only of one dataset and/or one partner.

        Summing the lines of (dataset, partner) gives that account's spend; summing all lines
        of a dataset gives its global spend (charges are written in the same transaction as
        the account updates, so the two never disagree).
        """
        query = select(
            charges.c.created_at, charges.c.dataset, charges.c.partner, charges.c.amount_nano
        ).order_by(charges.c.created_at, charges.c.id)
        if dataset is not None:
            query = query.where(charges.c.dataset == dataset)
        if partner is not None:
            query = query.where(charges.c.partner == partner)
        with self.database.read() as conn:
            rows = conn.execute(query).all()
        return [
            ChargeLine(as_utc(r.created_at), r.dataset, r.partner, from_nano(int(r.amount_nano)))
            for r in rows
        ]
