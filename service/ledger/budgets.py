"""Budget accounts in exact integer nano-units, charged atomically at two levels.

A charge raises the partner's spend on a dataset and the dataset's global spend in one
transaction, each with a conditional ``UPDATE … WHERE spent + cost <= budget``: on SQLite
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

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.database.engine import Database
from service.database.schema import budget_accounts, charges
from service.database.timestamps import as_utc
from service.dp.accounting import from_nano, remaining_budget, to_nano

GLOBAL = "*"


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

    def _ensure_accounts(self, conn: Connection, dataset: str, partner: str) -> None:
        insert = (sqlite.insert if self.database.is_sqlite else postgresql.insert)(budget_accounts)
        conn.execute(
            insert.values(
                [
                    {"dataset": dataset, "partner": partner, "spent_nano": 0},
                    {"dataset": dataset, "partner": GLOBAL, "spent_nano": 0},
                ]
            ).on_conflict_do_nothing()
        )

    def _spent(self, conn: Connection, dataset: str, partner: str) -> int:
        return self._account(conn, dataset, partner) or 0

    @staticmethod
    def _account(conn: Connection, dataset: str, partner: str) -> int | None:
        value = conn.execute(
            select(budget_accounts.c.spent_nano).where(
                budget_accounts.c.dataset == dataset, budget_accounts.c.partner == partner
            )
        ).scalar()
        return None if value is None else int(value)

    @staticmethod
    def _add(conn: Connection, dataset: str, account: str, cost: int, limit: int) -> int | None:
        """Add ``cost`` to an account if it stays within ``limit``; the new spend, or None."""
        row = conn.execute(
            update(budget_accounts)
            .where(
                budget_accounts.c.dataset == dataset,
                budget_accounts.c.partner == account,
                budget_accounts.c.spent_nano + cost <= limit,
            )
            .values(spent_nano=budget_accounts.c.spent_nano + cost)
            .returning(budget_accounts.c.spent_nano)
        ).first()
        return None if row is None else int(row.spent_nano)

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

        On ``BudgetExhausted`` the caller's transaction must be rolled back (the ``with``
        block of ``Database.write`` does that when the exception propagates).
        """
        cost = to_nano(amount)
        limits = (
            (partner, to_nano(partner_budget), "partner"),
            (GLOBAL, to_nano(global_budget), "dataset"),
        )
        after: dict[str, int] = {}
        for account, limit, scope in limits:
            spent_after = self._add(conn, dataset, account, cost, limit)
            if spent_after is None:
                # Either over the limit, or no account yet (first charge on this dataset or
                # by this partner; a concurrent first charge may be opening it right now).
                # Open the accounts if needed and try once more: the retry tells them apart.
                if self._account(conn, dataset, account) is None:
                    self._ensure_accounts(conn, dataset, partner)
                spent_after = self._add(conn, dataset, account, cost, limit)
            if spent_after is None:
                spent = {
                    "partner": self._spent(conn, dataset, partner),
                    "dataset": self._spent(conn, dataset, GLOBAL),
                }
                # Accounts already updated in this transaction carry the refused cost, which
                # the rollback removes: report what remains without it.
                for charged in after:
                    spent[charged] -= cost
                remaining = Remaining(
                    partner=remaining_budget(partner_budget, from_nano(spent["partner"])),
                    dataset=remaining_budget(global_budget, from_nano(spent["dataset"])),
                )
                raise BudgetExhausted(unit, remaining, scope)
            after[scope] = spent_after
        return Remaining(
            partner=remaining_budget(partner_budget, from_nano(after["partner"])),
            dataset=remaining_budget(global_budget, from_nano(after["dataset"])),
        )

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
            charges.insert().values(
                dataset=dataset,
                partner=partner,
                release_id=release_id,
                definition=definition,
                amount_nano=to_nano(amount),
                created_at=datetime.now(UTC),
            )
        )

    def remaining(
        self, *, dataset: str, partner: str, partner_budget: Fraction, global_budget: Fraction
    ) -> Remaining:
        """What is left of a grant and of the dataset's global budget, read together."""
        with self.database.read() as conn:
            own = self._spent(conn, dataset, partner)
            total = self._spent(conn, dataset, GLOBAL)
        return Remaining(
            partner=remaining_budget(partner_budget, from_nano(own)),
            dataset=remaining_budget(global_budget, from_nano(total)),
        )

    def spent(self, dataset: str, partner: str) -> Fraction:
        with self.database.read() as conn:
            return from_nano(self._spent(conn, dataset, partner))

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
