"""OpenDP measurements for vectors of integer aggregates, and the plans that price them.

Pure DP uses the discrete Laplace mechanism over ``l1_distance``; zCDP the discrete Gaussian
over ``l2_distance``. Both are OpenDP's constant-time samplers: no noise in dpx is drawn
any other way. Every cost comes from the measurement's own privacy map (``map``/``check``),
never from a hand-written epsilon = sensitivity / scale.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Literal

import opendp.prelude as dp

from service.dp.accounting import ceil_nano, float_at_most
from service.dp.errors import InvalidQuery
from service.policy.model import Definition

dp.enable_features("contrib")

MechanismName = Literal["discrete_laplace", "discrete_gaussian"]

# Float steps tried above the closed-form scale before falling back to binary search.
_NUDGES = 16

MAX_GAUSSIAN_SCALE = 1e6
"""The largest discrete Gaussian scale a plan may use (its accuracy takes ~1 s to compute)."""

_GAUSSIAN_INVERSE_LIMIT = 1e4


@dataclass(frozen=True)
class Plan:
    """One priced OpenDP measurement for one vector of aggregates, before any noise is drawn.

    ``cost`` is the exact amount to charge: the measurement is confirmed to lose no more than
    that at ``sensitivity``. ``accuracy`` is the half-width of the (1 - alpha) interval of
    one released value.
    """

    definition: Definition
    mechanism: MechanismName
    sensitivity: int
    scale: float
    cost: Fraction
    alpha: float
    accuracy: float
    measurement: dp.Measurement


def mechanism_name(definition: Definition) -> MechanismName:
    """The mechanism a dataset's privacy definition uses."""
    return "discrete_laplace" if definition == "pure" else "discrete_gaussian"


@functools.cache
def _input_space(definition: Definition) -> tuple[dp.Domain, dp.Metric]:
    # Immutable OpenDP objects, built once: building them costs more than the measurement.
    metric = dp.l1_distance(T=int) if definition == "pure" else dp.l2_distance(T=int)
    return dp.vector_domain(dp.atom_domain(T=int)), metric


def build_measurement(definition: Definition, scale: float) -> dp.Measurement:
    """The vector measurement of ``definition`` at ``scale`` (any vector length)."""
    domain, metric = _input_space(definition)
    measurement: dp.Measurement
    if definition == "pure":
        measurement = dp.m.make_laplace(domain, metric, scale=scale)
    else:
        measurement = dp.m.make_gaussian(domain, metric, scale=scale)
    return measurement


def scale_to_accuracy(definition: Definition, scale: float, alpha: float) -> float:
    """OpenDP's half-width: P(|noise| > accuracy) <= alpha for one value at ``scale``.

    Never negative: at vanishing scales OpenDP's Laplace formula gives -inf, where the noise
    is 0 with probability above 1 - alpha.
    """
    if definition == "pure":
        accuracy = dp.discrete_laplacian_scale_to_accuracy(float(scale), float(alpha))
    else:
        accuracy = dp.discrete_gaussian_scale_to_accuracy(float(scale), float(alpha))
    return max(0.0, float(accuracy))


def _check_scale(definition: Definition, scale: float, field: str, problem: str) -> None:
    # OpenDP sums the discrete Gaussian's pmf to find its accuracy: time grows with the
    # scale (about 1 s at 1e6). Beyond that the release would be noise anyway.
    if definition == "zcdp" and scale > MAX_GAUSSIAN_SCALE:
        raise InvalidQuery(
            field, f"{problem}: the noise scale would exceed {MAX_GAUSSIAN_SCALE:.0f}"
        )


def _scale_for_accuracy(definition: Definition, max_error: float, alpha: float) -> float:
    """The largest scale whose accuracy (by OpenDP's forward function) is <= ``max_error``."""
    if definition == "pure":
        start = float(dp.accuracy_to_discrete_laplacian_scale(float(max_error), float(alpha)))
    elif max_error <= _GAUSSIAN_INVERSE_LIMIT:
        start = float(dp.accuracy_to_discrete_gaussian_scale(float(max_error), float(alpha)))
    else:
        # OpenDP's inverse searches in time linear in max_error; the continuous Gaussian
        # quantile gives a start within a hair, confirmed below by the forward function.
        start = max_error / NormalDist().inv_cdf(1 - alpha / 2)
    _check_scale(definition, start, "accuracy.max_error", f"{max_error} is too large")
    if scale_to_accuracy(definition, start, alpha) <= max_error:
        return start
    for step in range(12):
        candidate = start * (1 - 1e-4 * 2.0**step)
        if scale_to_accuracy(definition, candidate, alpha) <= max_error:
            return candidate
    # Far off (integer-valued Gaussian accuracy below 1): bisect down from the start.
    low, high = start, start
    for _ in range(2000):
        low /= 2
        if scale_to_accuracy(definition, low, alpha) <= max_error:
            break
    else:
        raise InvalidQuery(
            "accuracy.max_error",
            f"{max_error} cannot be met at alpha {alpha}; ask for a larger max_error",
        )
    for _ in range(60):
        middle = (low + high) / 2
        if scale_to_accuracy(definition, middle, alpha) <= max_error:
            low = middle
        else:
            high = middle
    return low


def plan_for_cost(definition: Definition, sensitivity: int, cost: Fraction, alpha: float) -> Plan:
    """The least-noise plan whose loss at ``sensitivity`` is at most ``cost``; charges ``cost``.

    The result is confirmed with the measurement's own ``check``: the charge is the exact
    asked amount, never the float the privacy map rounds to (which would make ten charges
    of 0.1 exceed 1). Plans are pure values, so repeated prices are served from a cache.
    """
    return _plan_for_cost(definition, sensitivity, cost, alpha)


@functools.lru_cache(maxsize=4096)
def _plan_for_cost(definition: Definition, sensitivity: int, cost: Fraction, alpha: float) -> Plan:
    bound = float_at_most(cost)
    scale, measurement = _measurement_for_cost(definition, sensitivity, bound)
    _check_scale(definition, scale, "rho", f"{cost} is too small for this query")
    return _plan(definition, sensitivity, scale, cost, alpha, measurement)


def _measurement_for_cost(
    definition: Definition, sensitivity: int, bound: float
) -> tuple[float, dp.Measurement]:
    """The smallest scale (to float precision) whose privacy map at ``sensitivity`` is <= bound,
    and the measurement at that scale, confirmed by its own ``check``.

    Starts from the textbook scale (d / epsilon; d / sqrt(2 rho)) and steps up one float at a
    time until OpenDP's own ``check`` accepts it, since the map rounds conservatively. Should
    that not settle within a few steps, OpenDP's binary search decides.
    """
    if definition == "pure":
        scale = sensitivity / bound
    else:
        scale = sensitivity / math.sqrt(2 * bound)
    for _ in range(_NUDGES):
        measurement = build_measurement(definition, scale)
        if measurement.check(sensitivity, bound):
            return scale, measurement
        scale = math.nextafter(scale, math.inf)
    builder: Callable[[float], dp.Measurement] = lambda s: build_measurement(  # noqa: E731
        definition, s
    )
    scale = float(dp.binary_search_param(builder, d_in=sensitivity, d_out=bound))
    measurement = build_measurement(definition, scale)
    # Every path returns a measurement confirmed by its own check, and only such a one.
    if not measurement.check(sensitivity, bound):
        raise ValueError(f"no scale confirms a loss of {bound} at sensitivity {sensitivity}")
    return scale, measurement


def plan_for_accuracy(
    definition: Definition, sensitivity: int, max_error: float, alpha: float
) -> Plan:
    """The cheapest plan whose values are within ``max_error`` with probability >= 1 - alpha.

    The scale is the largest whose OpenDP accuracy is within ``max_error``; the cost is the
    privacy map at ``sensitivity`` rounded UP to the next nano-unit, so the charge always
    covers the loss.
    """
    scale = _scale_for_accuracy(definition, max_error, alpha)
    measurement = build_measurement(definition, scale)
    cost = ceil_nano(float(measurement.map(sensitivity)))  # type: ignore[no-untyped-call]
    if not measurement.check(sensitivity, float_at_most(cost)):
        raise ValueError(f"the measurement at scale {scale} does not confirm cost {cost}")
    return _plan(definition, sensitivity, scale, cost, alpha, measurement)


def _plan(
    definition: Definition,
    sensitivity: int,
    scale: float,
    cost: Fraction,
    alpha: float,
    measurement: dp.Measurement,
) -> Plan:
    """A plan whose ``measurement`` was confirmed to lose at most ``cost`` at ``sensitivity``."""
    return Plan(
        definition=definition,
        mechanism=mechanism_name(definition),
        sensitivity=sensitivity,
        scale=scale,
        cost=cost,
        alpha=alpha,
        accuracy=scale_to_accuracy(definition, scale, alpha),
        measurement=measurement,
    )


def serialized(plan: Plan) -> str:
    """The measurement as OpenDP JSON; ``dp.deserialize`` rebuilds a working measurement."""
    return str(dp.serialize(plan.measurement))  # type: ignore[no-untyped-call]


_draws = 0
_draws_lock = threading.Lock()


def noise_draws() -> int:
    """How many times this process has invoked an OpenDP measurement on true aggregates.

    Every draw is privacy loss that must be paid for, so the count lets operators and tests
    see that a refused request drew none.
    """
    return _draws


def noisy(plan: Plan, vector: list[int]) -> list[int]:
    """One release: the plan's OpenDP measurement invoked on the true aggregates.

    Call only once the plan's cost is known to fit; the output must not leave the service
    unless the charge commits.
    """
    global _draws
    with _draws_lock:
        _draws += 1
    released = plan.measurement([int(value) for value in vector])
    return [int(value) for value in released]
