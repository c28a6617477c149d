"""The ledger's charges: exact, two-level, atomic, and never over budget under concurrency."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.database.engine import Database
from service.database.migrate import upgrade
from service.ledger.budgets import BudgetExhausted, Ledger, Remaining
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

TENTH = Fraction(1, 10)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def ledger(database: Database) -> Ledger:
    return Ledger(database)


def charge(
    ledger: Ledger,
    amount: Fraction,
    *,
    dataset: str = "uk",
    partner: str = "a",
    partner_budget: Fraction = Fraction(1),
    global_budget: Fraction = Fraction(8),
) -> Remaining:
    with ledger.database.write() as conn:
        return ledger.charge(
            conn,
            dataset=dataset,
            partner=partner,
            unit="epsilon",
            amount=amount,
            partner_budget=partner_budget,
            global_budget=global_budget,
        )


def test_ten_tenths_fit_a_budget_of_one_and_the_eleventh_does_not(ledger: Ledger) -> None:
    left = [charge(ledger, TENTH).partner for _ in range(10)]

    with pytest.raises(BudgetExhausted, match="partner's grant: remaining epsilon is 0") as info:
        charge(ledger, TENTH)

    assert left == [Fraction(9 - i, 10) for i in range(10)]
    assert info.value.scope == "partner"
    assert info.value.remaining == Remaining(partner=Fraction(0), dataset=Fraction(7))
    assert ledger.spent("uk", "a") == 1 and ledger.spent("uk", "*") == 1


def test_global_refusal_reports_the_partners_budget_without_the_refused_cost(
    ledger: Ledger,
) -> None:
    charge(ledger, Fraction(7, 10), partner="a", global_budget=Fraction(1))
    charge(ledger, Fraction(2, 10), partner="b", global_budget=Fraction(1))

    with pytest.raises(BudgetExhausted, match="global budget: remaining epsilon is 0.1") as info:
        charge(ledger, Fraction(2, 10), partner="b", global_budget=Fraction(1))

    assert info.value.scope == "dataset"
    assert info.value.remaining == Remaining(partner=Fraction(8, 10), dataset=Fraction(1, 10))
    assert ledger.spent("uk", "b") == Fraction(2, 10)
    assert ledger.spent("uk", "*") == Fraction(9, 10)


def test_a_refused_charge_leaves_both_accounts_and_the_transaction_untouched(
    ledger: Ledger,
) -> None:
    charge(ledger, Fraction(1, 2))
    before = dict(ledger.all_spent())

    with pytest.raises(BudgetExhausted):
        charge(ledger, Fraction(3, 5))

    assert dict(ledger.all_spent()) == before


def test_a_grant_lowered_below_spend_reports_zero_left_not_a_debt(ledger: Ledger) -> None:
    charge(ledger, Fraction(8, 10))

    with pytest.raises(BudgetExhausted) as info:
        charge(ledger, TENTH, partner_budget=Fraction(1, 2))

    assert info.value.remaining.partner == 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=15),
    st.integers(min_value=1, max_value=2000),
)
def test_accepted_charges_are_exactly_those_that_fit(
    ledger: Ledger, costs: list[int], budget_milli: int
) -> None:
    dataset = "ds-" + secrets.token_hex(4)  # a fresh pair of accounts per example
    budget = Fraction(budget_milli, 1000)
    spent = Fraction(0)
    for milli in costs:
        cost = Fraction(milli, 1000)
        try:
            charge(ledger, cost, dataset=dataset, partner_budget=budget, global_budget=budget)
            accepted = True
        except BudgetExhausted:
            accepted = False
        assert accepted == (spent + cost <= budget)
        spent += cost if accepted else 0
    assert ledger.spent(dataset, "a") == spent == ledger.spent(dataset, "*")


def test_concurrent_charges_never_exceed_the_grant(ledger: Ledger) -> None:
    outcomes: list[bool] = []
    lock = threading.Lock()

    def spend() -> None:
        for _ in range(5):
            try:
                charge(ledger, TENTH)
                ok = True
            except BudgetExhausted:
                ok = False
            with lock:
                outcomes.append(ok)

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count(True) == 10 and outcomes.count(False) == 20
    assert ledger.spent("uk", "a") == 1
