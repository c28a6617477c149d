"""An empirical privacy audit of the synopsis build path (price, OpenDP noise, fit, round).

Two neighbouring datasets differ by one person who contributes the most contacts the policy
allows (4) to one cell. The build runs many times on each; the audit counts how often the
fitted table's [month, channel] cell of that person exceeds a threshold, and turns the two
rates into a lower bound on epsilon with the shared harness (``tests/privacy_audit.py``:
Clopper-Pearson intervals, the bound holding with probability >= 0.95). A correct build must
never show more loss than it charged (the bound <= 1, the synopsis budget). A deliberately
broken variant, a policy that understates the person bound as 1 while the data holds a
person with 4 contacts (noise four times too small), must be flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from service.dp.synopsis import design, estimate, marginal_covariance, measure
from service.policy.model import DatasetPolicy, Dimension, SynopsisPolicy
from tests.privacy_audit import Audit, audit

pytestmark = pytest.mark.slow

RUNS = 4000
# Lower than the harness's default (1 - 1e-6): each build is slow, so the audit runs fewer
# trials, and the broken variant must still be flagged with them.
CONFIDENCE = 0.95
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


def _audit(policy: DatasetPolicy, scenario: str) -> Audit:
    priced = design(policy)
    base = np.full((3, 2, 2), 30, dtype=np.int64)
    neighbour = base.copy()
    neighbour[0, 0, 0] += 4  # one person, four contacts, one cell
    members = ((0, 1), (0, 2), (1, 2))
    spread = math.sqrt(marginal_covariance(priced.sizes, members, priced.variances, (0, 1))[0, 0])
    # The fitted table holds integers, so the smallest integer at or above the threshold
    # marks the same event.
    threshold = math.ceil(base[0, 0, :].sum() + 4 + 1.5 * spread)

    def release(table: np.ndarray) -> Callable[[int], int]:
        counts = _marginals(table)

        def fitted_cell(_: int) -> int:
            fitted = np.asarray(estimate(priced, measure(priced, counts)).table)
            return int(fitted.reshape(priced.sizes)[0, 0, :].sum())

        return fitted_cell

    return audit(
        scenario,
        release_with=release(neighbour),
        release_without=release(base),
        threshold=threshold,
        trials=RUNS,
        claimed_epsilon=CLAIMED_EPSILON,
        confidence=CONFIDENCE,
    )


def test_the_real_build_shows_no_more_loss_than_it_charges() -> None:
    result = _audit(AUDITED, "synopsis build")
    assert not result.violated, result.summary()


def test_a_build_whose_noise_ignores_the_person_bound_is_flagged() -> None:
    broken = replace(AUDITED, max_contacts_per_person=1)
    result = _audit(broken, "synopsis build, person bound understated")
    assert result.violated, result.summary()
