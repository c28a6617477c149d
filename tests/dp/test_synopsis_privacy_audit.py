"""An empirical privacy audit of the synopsis build path (price, OpenDP noise, fit, round).

Two neighbouring datasets differ by one person who contributes the most contacts the policy
allows (4) to one cell. The build runs many times on each; the audit counts how often the
fitted table's [month, channel] cell of that person exceeds a threshold, and turns the two
rates into a lower bound on epsilon with Clopper-Pearson intervals (each at 1 - 0.025, so
the bound holds with probability >= 0.95): ``eps_lb = ln(low(p1) / high(p0))``. A correct
build must never show more loss than it charged (eps_lb <= 1, the synopsis budget). A
deliberately broken variant, a policy that understates the person bound as 1 while the data
holds a person with 4 contacts (noise four times too small), must be flagged.

Statistics are small and self-contained: scipy's beta quantiles give the exact intervals.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import beta

from service.dp.synopsis import design, estimate, marginal_covariance, measure
from service.policy.model import DatasetPolicy, Dimension, SynopsisPolicy

pytestmark = pytest.mark.slow

RUNS = 4000
CONFIDENCE = 0.025  # per interval; two intervals: the bound holds at 0.95
MONTHS = ("2024-01", "2024-02", "2024-03")
AUDITED = DatasetPolicy(
    id="audit",
    title="Privacy audit (synthetic)",
    owner="audit-owner",
    definition="pure",
    unit="person",
    max_contacts_per_person=4,
    max_contacts_per_cell=None,
    delta=None,
    global_budget=Fraction(10),
    share_releases=False,
    dimensions=(
        Dimension("month", "month", MONTHS),
        Dimension("channel", "categorical", ("phone", "chat")),
        Dimension("referral_source", "categorical", ("police_warning", "other")),
    ),
    measures=(),
    source="datasets/audit.yaml",
    synopsis=SynopsisPolicy(
        marginals=(
            ("month", "channel"),
            ("month", "referral_source"),
            ("channel", "referral_source"),
        ),
        budget=Fraction(1),
    ),
)
CLAIMED_EPSILON = 1.0


def _marginals(table: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in table.sum(axis=summed).reshape(-1)] for summed in ((2,), (1,), (0,))]


def _epsilon_lower_bound(policy: DatasetPolicy) -> float:
    priced = design(policy)
    base = np.full((3, 2, 2), 30, dtype=np.int64)
    neighbour = base.copy()
    neighbour[0, 0, 0] += 4  # one person, four contacts, one cell
    members = ((0, 1), (0, 2), (1, 2))
    spread = math.sqrt(marginal_covariance(priced.sizes, members, priced.variances, (0, 1))[0, 0])
    threshold = base[0, 0, :].sum() + 4 + 1.5 * spread

    def exceed(table: np.ndarray) -> int:
        counts = _marginals(table)
        hits = 0
        for _ in range(RUNS):
            fitted = np.asarray(estimate(priced, measure(priced, counts)).table)
            hits += fitted.reshape(priced.sizes)[0, 0, :].sum() >= threshold
        return hits

    with_person, without = exceed(neighbour), exceed(base)
    high_p0 = float(beta.ppf(1 - CONFIDENCE, without + 1, RUNS - without))
    low_p1 = float(beta.ppf(CONFIDENCE, with_person, RUNS - with_person + 1)) if with_person else 0
    return math.log(low_p1 / high_p0) if low_p1 > 0 else 0.0


def test_the_real_build_shows_no_more_loss_than_it_charges() -> None:
    bound = _epsilon_lower_bound(AUDITED)
    assert bound <= CLAIMED_EPSILON, bound


def test_a_build_whose_noise_ignores_the_person_bound_is_flagged() -> None:
    broken = replace(AUDITED, max_contacts_per_person=1)
    bound = _epsilon_lower_bound(broken)
    assert bound > CLAIMED_EPSILON, bound
