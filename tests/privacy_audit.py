"""An empirical privacy audit: a high-confidence lower bound on the epsilon a release path has.

Run the mechanism many times on two neighbouring datasets (``with``: the audited person in,
``without``: out) and count how often a release reaches a threshold fixed in advance. For any
event ``E`` an epsilon-DP mechanism satisfies ``P[M(with) in E] <= e**epsilon P[M(without) in E]``,
so ``ln(lower(P_with) / upper(P_without))`` with exact (Clopper-Pearson) binomial bounds is a
lower bound on the true epsilon that holds with probability at least ``confidence`` (for an
(epsilon, delta) claim, ``delta`` is taken off the first rate). A path
whose lower bound exceeds its claimed epsilon demonstrably loses more than it charges.

The API, for any suite (engine, exchange, synopsis build) that can draw fresh releases:

* :func:`audit` runs the trials and returns an :class:`Audit` with the figures;
* :func:`epsilon_lower_bound` and :func:`clopper_pearson` are the statistics alone.

Choose the threshold from the true values (not from the releases): for counts with discrete
Laplace noise, ``threshold = true value with the person`` makes the event ``release >=
threshold`` reach the ratio ``e**(distance / scale)`` exactly, with the most trials in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.stats import beta

CONFIDENCE = 1 - 1e-6
"""Default: a correct mechanism is flagged by chance in at most one run in a million."""


@dataclass(frozen=True)
class Audit:
    """The figures of one audited scenario.

    ``hits_with`` / ``hits_without`` count the releases at or above ``threshold`` among
    ``trials`` on each side; ``lower_bound`` is the epsilon they prove at ``confidence``.
    """

    scenario: str
    claimed_epsilon: float
    lower_bound: float
    threshold: int
    trials: int
    hits_with: int
    hits_without: int
    confidence: float

    @property
    def violated(self) -> bool:
        """True when the releases prove a loss above the claim."""
        return self.lower_bound > self.claimed_epsilon

    def summary(self) -> str:
        """One line with the figures, for test output and reports."""
        return (
            f"{self.scenario}: claimed epsilon {self.claimed_epsilon:g}, "
            f"empirical lower bound {self.lower_bound:.3f} at confidence {self.confidence} "
            f"({self.hits_with}/{self.trials} vs {self.hits_without}/{self.trials} "
            f"releases >= {self.threshold})"
        )


def clopper_pearson(hits: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided binomial bounds ``(lower, upper)`` on the success probability; each
    holds on its own with probability at least ``confidence``."""
    if not 0 <= hits <= trials or trials < 1:
        raise ValueError(f"need 0 <= hits <= trials and trials >= 1, got {hits}/{trials}")
    alpha = 1 - confidence
    lower = 0.0 if hits == 0 else float(beta.ppf(alpha, hits, trials - hits + 1))
    upper = 1.0 if hits == trials else float(beta.ppf(1 - alpha, hits + 1, trials - hits))
    return lower, upper


def epsilon_lower_bound(
    hits_with: int,
    hits_without: int,
    trials: int,
    confidence: float = CONFIDENCE,
    *,
    delta: float = 0.0,
) -> float:
    """``ln((lower(P_with) - delta) / upper(P_without))``: at least the true epsilon of an
    (epsilon, ``delta``)-DP mechanism with probability ``confidence`` (each of the two bounds
    at half the error, by the union bound). ``-inf`` when the lower rate is not above
    ``delta``."""
    half = 1 - (1 - confidence) / 2
    lower, _ = clopper_pearson(hits_with, trials, half)
    _, upper = clopper_pearson(hits_without, trials, half)
    return math.log((lower - delta) / upper) if lower > delta else -math.inf


def audit(
    scenario: str,
    *,
    release_with: Callable[[int], int],
    release_without: Callable[[int], int],
    threshold: int,
    trials: int,
    claimed_epsilon: float,
    confidence: float = CONFIDENCE,
    delta: float = 0.0,
) -> Audit:
    """Draw ``trials`` fresh releases on each side and bound the epsilon they show.

    ``release_with(i)`` / ``release_without(i)`` return the audited value of the ``i``-th
    release (``i`` runs from 0 to ``trials - 1``; a path that answers repeated questions from
    a cache can use it to ask a distinct question each time). Every call must draw fresh
    noise: a repeated value would count one release many times. ``delta`` is the claim's
    delta (0 for pure DP).
    """
    hits_with = sum(release_with(index) >= threshold for index in range(trials))
    hits_without = sum(release_without(index) >= threshold for index in range(trials))
    return Audit(
        scenario=scenario,
        claimed_epsilon=claimed_epsilon,
        lower_bound=epsilon_lower_bound(hits_with, hits_without, trials, confidence, delta=delta),
        threshold=threshold,
        trials=trials,
        hits_with=hits_with,
        hits_without=hits_without,
        confidence=confidence,
    )
