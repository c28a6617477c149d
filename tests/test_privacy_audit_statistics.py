"""The statistics of the privacy audit harness: exact binomial bounds, a sound epsilon bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.privacy_audit import audit, clopper_pearson, epsilon_lower_bound


@pytest.mark.parametrize("trials", [1, 10, 1000])
def test_clopper_pearson_has_the_closed_form_at_the_extremes(trials: int) -> None:
    # P(0 hits) = (1 - p)**n and P(n hits) = p**n give the bounds in closed form.
    alpha = 0.01
    assert clopper_pearson(0, trials, 1 - alpha) == (0.0, pytest.approx(1 - alpha ** (1 / trials)))
    assert clopper_pearson(trials, trials, 1 - alpha) == (pytest.approx(alpha ** (1 / trials)), 1.0)


@given(st.integers(min_value=1, max_value=500), st.data())
def test_clopper_pearson_brackets_the_observed_rate(trials: int, data: st.DataObject) -> None:
    hits = data.draw(st.integers(min_value=0, max_value=trials))
    lower, upper = clopper_pearson(hits, trials, 0.95)
    assert 0 <= lower <= hits / trials <= upper <= 1
    wider = clopper_pearson(hits, trials, 0.999)
    assert wider[0] <= lower and upper <= wider[1]


def test_the_epsilon_bound_approaches_the_true_ratio_from_below() -> None:
    # Rates 0.5 and 0.5 / e: a mechanism with epsilon exactly 1 at this event.
    bounds = [
        epsilon_lower_bound(round(n * 0.5), round(n * 0.5 / math.e), n) for n in (10**3, 10**5)
    ]
    assert bounds[0] < bounds[1] < 1 < bounds[1] + 0.1


def test_the_epsilon_bound_is_minus_infinity_without_hits() -> None:
    assert epsilon_lower_bound(0, 0, 100) == -math.inf


def test_a_delta_claim_lowers_the_epsilon_bound() -> None:
    pure = epsilon_lower_bound(5000, 1000, 10**4)
    approximate = epsilon_lower_bound(5000, 1000, 10**4, delta=0.1)
    assert approximate < pure
    assert epsilon_lower_bound(5000, 1000, 10**4, delta=0.6) == -math.inf


def test_audit_counts_releases_at_or_above_the_threshold() -> None:
    result = audit(
        "fixed",
        release_with=lambda index: index % 2,  # 1 on odd releases: 50 of 100 reach 1
        release_without=lambda index: int(index < 10),  # 10 of 100
        threshold=1,
        trials=100,
        claimed_epsilon=1.0,
    )
    assert (result.hits_with, result.hits_without) == (50, 10)
    assert result.lower_bound == epsilon_lower_bound(50, 10, 100)
    assert "claimed epsilon 1" in result.summary()
