"""The ledger's history: every committed charge, in time order, for the dashboard's burn-down."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import pytest

from service.database.engine import Database
from service.database.migrate import upgrade
from service.ledger.budgets import BudgetExhausted, Ledger
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    database = Database(database_url)
    upgrade(database)
    yield Ledger(database)
    database.dispose()


def charge(ledger: Ledger, release_id: str, dataset: str, partner: str, amount: Fraction) -> None:
    with ledger.database.write() as conn:
        ledger.charge(
            conn,
            dataset=dataset,
            partner=partner,
            unit="epsilon",
            amount=amount,
            partner_budget=Fraction(1),
            global_budget=Fraction(2),
        )
        ledger.record(
            conn,
            release_id=release_id,
            dataset=dataset,
            partner=partner,
            definition="pure",
            amount=amount,
        )


def test_history_lists_charges_oldest_first_and_filters_by_dataset_and_partner(
    ledger: Ledger,
) -> None:
    charge(ledger, "rel_1", "uk", "a", Fraction(1, 10))
    charge(ledger, "rel_2", "uk", "b", Fraction(1, 4))
    charge(ledger, "rel_3", "nl", "a", Fraction(1, 2))
    charge(ledger, "rel_4", "uk", "a", Fraction(3, 10))

    everything = ledger.history()
    assert [(c.dataset, c.partner, c.amount) for c in everything] == [
        ("uk", "a", Fraction(1, 10)),
        ("uk", "b", Fraction(1, 4)),
        ("nl", "a", Fraction(1, 2)),
        ("uk", "a", Fraction(3, 10)),
    ]
    times = [c.created_at for c in everything]
    assert times == sorted(times)
    assert all(t.utcoffset() is not None for t in times)
    assert [c.amount for c in ledger.history(dataset="uk", partner="a")] == [
        Fraction(1, 10),
        Fraction(3, 10),
    ]
    assert {c.dataset for c in ledger.history(partner="a")} == {"uk", "nl"}
    assert [c.partner for c in ledger.history(dataset="nl")] == ["a"]


def test_history_sums_to_what_the_accounts_hold(ledger: Ledger) -> None:
    for index in range(5):
        charge(ledger, f"rel_{index}", "uk", "a", Fraction(1, 5))
    with pytest.raises(BudgetExhausted):
        charge(ledger, "rel_refused", "uk", "a", Fraction(1, 5))
    assert sum(c.amount for c in ledger.history(dataset="uk")) == ledger.spent("uk", "*")
    assert sum(c.amount for c in ledger.history(partner="a")) == ledger.spent("uk", "a") == 1
