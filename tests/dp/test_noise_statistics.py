"""Statistical check that releases carry the noise they claim, and intervals cover as promised.

2,000 independent releases of one count (true value 100) through the engine, at discrete
Laplace scale 5 (pure DP, epsilon 2 at sensitivity 10) and discrete Gaussian sigma 5 (zCDP,
rho 2 at sensitivity 10). OpenDP's samplers cannot be seeded, so tolerances are set in
standard errors of each estimator to make a false alarm practically impossible while still
catching a mechanism with visibly less (or more) noise than it reports:

* variance: the sample variance has standard error sqrt((mu4 - sigma^4) / n), with mu4 and
  sigma^2 summed exactly from the pmf (about 2.5 for Laplace, 0.8 for Gaussian, i.e. 5% and
  3% of the variance). Two-sided |z| <= 5, and the one-sided "less noise than claimed"
  check z >= -4 (a false alarm about 3e-5 under the normal approximation).
* tail frequency and coverage: binomial, standard error sqrt(alpha (1 - alpha) / n) (0.0049
  at alpha 0.05); tolerance 5 standard errors, i.e. P(|noise| > accuracy) <= alpha + 0.024.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import pytest

from service.dp.aggregate import TrueAggregates
from service.dp.engine import plan_query, release_values
from service.dp.query import build_query
from service.policy.model import DatasetPolicy

RELEASES = 2_000
TRUE_COUNT = 100
ALPHA = 0.05
Z_TWO_SIDED = 5.0
Z_LESS_NOISE = -4.0


def _pmf(definition: str, scale: float) -> dict[int, float]:
    """The exact noise pmf (truncated where mass is below 1e-300) of the discrete mechanism."""
    support = range(-int(60 * scale) - 60, int(60 * scale) + 61)
    if definition == "pure":
        weights = {k: math.exp(-abs(k) / scale) for k in support}
    else:
        weights = {k: math.exp(-(k * k) / (2 * scale * scale)) for k in support}
    total = math.fsum(weights.values())
    return {k: w / total for k, w in weights.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("definition", "cost"), [("pure", "2"), ("zcdp", "2")])
def test_releases_carry_the_claimed_noise(
    definition: str, cost: str, make_dataset: Callable[..., DatasetPolicy]
) -> None:
    dataset = make_dataset(definition=definition, delta=Fraction(1, 10**7))
    unit = dataset.budget_unit
    query = build_query(
        {"dataset": dataset.id, "statistic": "count", unit: cost, "alpha": ALPHA}, dataset
    )
    plan = plan_query(query, dataset)
    assert plan.scale == pytest.approx(5.0, rel=1e-6)
    assert plan.max_error is not None
    aggregates = TrueAggregates(cells=[()], counts=[TRUE_COUNT], sums=None)

    releases = [release_values(plan, aggregates)[0] for _ in range(RELEASES)]
    noise = [float(value.value) - TRUE_COUNT for value in releases]

    pmf = _pmf(definition, plan.scale)
    variance = math.fsum(k * k * p for k, p in pmf.items())
    fourth = math.fsum(k**4 * p for k, p in pmf.items())
    if definition == "pure":
        ratio = math.exp(-1 / plan.scale)
        assert variance == pytest.approx(2 * ratio / (1 - ratio) ** 2, rel=1e-9)
    else:
        assert variance == pytest.approx(plan.scale**2, rel=1e-3)
    mean = math.fsum(noise) / RELEASES
    sample_variance = math.fsum((x - mean) ** 2 for x in noise) / (RELEASES - 1)
    z = (sample_variance - variance) / math.sqrt((fourth - variance**2) / RELEASES)
    assert z >= Z_LESS_NOISE, f"less noise than claimed: variance {sample_variance:.2f}"
    assert abs(z) <= Z_TWO_SIDED, f"variance {sample_variance:.2f}, expected {variance:.2f}"

    tolerance = 5 * math.sqrt(ALPHA * (1 - ALPHA) / RELEASES)
    beyond = sum(abs(x) > plan.max_error for x in noise) / RELEASES
    assert beyond <= ALPHA + tolerance
    covered = sum(value.ci[0] <= TRUE_COUNT <= value.ci[1] for value in releases) / RELEASES
    assert covered >= 1 - ALPHA - tolerance


@pytest.mark.slow
@pytest.mark.parametrize(("definition", "cost"), [("pure", "1"), ("zcdp", "0.5")])
def test_mean_intervals_cover_the_true_mean(
    definition: str, cost: str, make_dataset: Callable[..., DatasetPolicy]
) -> None:
    # 40 contacts of 30 minutes: a small cell, where the count's noise matters to the mean.
    dataset = make_dataset(definition=definition, delta=Fraction(1, 10**7))
    raw = {"dataset": dataset.id, "statistic": "mean", "measure": "minutes"}
    query = build_query({**raw, dataset.budget_unit: cost, "alpha": ALPHA}, dataset)
    plan = plan_query(query, dataset)
    aggregates = TrueAggregates(cells=[()], counts=[40], sums=[1200])
    releases = [release_values(plan, aggregates)[0] for _ in range(RELEASES)]
    assert all(0 <= value.ci[0] <= value.value <= value.ci[1] <= 120 for value in releases)
    tolerance = 5 * math.sqrt(ALPHA * (1 - ALPHA) / RELEASES)
    covered = sum(value.ci[0] <= 30 <= value.ci[1] for value in releases) / RELEASES
    assert covered >= 1 - ALPHA - tolerance
