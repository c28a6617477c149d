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
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Literal

import opendp.prelude as dp

from service.dp.accounting import ceil_nano, float_at_most
from service.dp.errors import InvalidQuery
from service.policy.model import BUDGET_UNITS, Definition

dp.enable_features("contrib")

MechanismName = Literal["discrete_laplace", "discrete_gaussian"]

# Float steps tried above the closed-form scale before falling back to binary search.
_NUDGES = 16

ENGINE_INTEGER_MAX = 2**31 - 1
"""The largest total a dataset may hold (its contacts, or a measure's absolute sums): ingest
refuses a batch past it. Far above helpline volumes and far inside the measurements' 64-bit
values, so no aggregate a query sums ever comes near the clamping at the ``i64`` edges."""

MAX_GAUSSIAN_SCALE = 1e6
"""The largest discrete Gaussian scale a plan may use (its accuracy takes ~1 s to compute)."""

MAX_LAPLACE_SCALE = 1e15
"""The largest discrete Laplace scale a plan may use: noise at it stays below 2**63 with
probability 1 - e**-9000."""

_GAUSSIAN_INVERSE_LIMIT = 1e4

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of the values a measurement takes and releases (OpenDP's ``i64``)."""
SEARCH_SECONDS = 1.0
"""The most time an accuracy target may take to price; an estimate is free, so it is capped."""

_HALVINGS = 64


@dataclass(frozen=True)
class Plan:
    """One priced OpenDP measurement for one vector of aggregates, before any noise is drawn.

    ``cost`` is the exact amount to charge: the measurement is confirmed to lose no more than
    that at ``sensitivity``. ``accuracy`` is the half-width of the (1 - alpha) interval of
    one released value.
    """

    definition: Definition
    mechanism: MechanismName
    sensitivity: float
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
    # 64-bit values; the L2 distance is a float, so the Gaussian takes an exact root.
    metric = dp.l1_distance(T="i64") if definition == "pure" else dp.l2_distance(T="f64")
    return dp.vector_domain(dp.atom_domain(T="i64")), metric


def build_measurement(definition: Definition, scale: float) -> dp.Measurement:
    """The vector measurement of ``definition`` at ``scale`` (any vector length).

    Values are 64-bit integers and OpenDP adds the noise with saturating arithmetic, so no
    true aggregate (see :func:`noisy`) can make a release fail. The L2 sensitivity is a
    float: the Gaussian is calibrated to the exact root, not to the next integer.
    """
    domain, metric = _input_space(definition)
    measurement: dp.Measurement
    if definition == "pure":
        measurement = dp.m.make_laplace(domain, metric, scale=scale)
    else:
        measurement = dp.m.make_gaussian(domain, metric, scale=scale)
    return measurement


def _distance(definition: Definition, sensitivity: float) -> int | float:
    """``sensitivity`` as the type of the measurement's input distance: an int under
    ``l1_distance(i64)``, a float under ``l2_distance(f64)``."""
    if definition == "pure":
        if sensitivity != int(sensitivity):
            raise ValueError(f"an L1 sensitivity is an integer, got {sensitivity}")
        return int(sensitivity)
    return float(sensitivity)


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
    # scale (about 1 s at 1e6). Beyond that the release would be noise anyway. A Laplace
    # scale is capped so that noise never reaches the 64-bit range, where values would
    # saturate outside their own intervals. Both limits depend on the plan alone, never on
    # data, and are checked before anything is charged.
    limit = MAX_GAUSSIAN_SCALE if definition == "zcdp" else MAX_LAPLACE_SCALE
    if scale > limit:
        raise InvalidQuery(field, f"{problem}: the noise scale would exceed {limit:.0f}")


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
    deadline = time.monotonic() + SEARCH_SECONDS

    def within(scale: float) -> bool:
        if time.monotonic() > deadline:
            raise InvalidQuery(
                "accuracy.max_error",
                f"{max_error} at alpha {alpha} takes too long to price; "
                "give epsilon or rho instead, or a larger max_error",
            )
        return scale_to_accuracy(definition, scale, alpha) <= max_error

    if within(start):
        return start
    for step in range(12):
        candidate = start * (1 - 1e-4 * 2.0**step)
        if within(candidate):
            return candidate
    # Far off (integer-valued Gaussian accuracy below 1): bisect down from the start. A
    # scale 2**-64 of the start that still misses the target means no scale meets it.
    low, high = start, start
    for _ in range(_HALVINGS):
        low /= 2
        if within(low):
            break
    else:
        raise InvalidQuery(
            "accuracy.max_error",
            f"{max_error} cannot be met at alpha {alpha}; ask for a larger max_error",
        )
    for _ in range(60):
        middle = (low + high) / 2
        if within(middle):
            low = middle
        else:
            high = middle
    return low


def plan_for_cost(definition: Definition, sensitivity: float, cost: Fraction, alpha: float) -> Plan:
    """The least-noise plan whose loss at ``sensitivity`` is at most ``cost``; charges ``cost``.

    The result is confirmed with the measurement's own ``check``: the charge is the exact
    asked amount, never the float the privacy map rounds to (which would make ten charges
    of 0.1 exceed 1). Plans are pure values, so repeated prices are served from a cache.
    """
    return _plan_for_cost(definition, sensitivity, cost, alpha)


@functools.lru_cache(maxsize=4096)
def _plan_for_cost(
    definition: Definition, sensitivity: float, cost: Fraction, alpha: float
) -> Plan:
    bound = float_at_most(cost)
    scale, measurement = _measurement_for_cost(definition, sensitivity, bound)
    unit = BUDGET_UNITS[definition]
    _check_scale(definition, scale, unit, f"{cost} is too small for this query")
    return _plan(definition, sensitivity, scale, cost, alpha, measurement)


def _measurement_for_cost(
    definition: Definition, sensitivity: float, bound: float
) -> tuple[float, dp.Measurement]:
    """The smallest scale (to float precision) whose privacy map at ``sensitivity`` is <= bound,
    and the measurement at that scale, confirmed by its own ``check``.

    Starts from the textbook scale (d / epsilon; d / sqrt(2 rho)) and steps up one float at a
    time until OpenDP's own ``check`` accepts it, since the map rounds conservatively. Should
    that not settle within a few steps, OpenDP's binary search decides.
    """
    d_in = _distance(definition, sensitivity)
    if definition == "pure":
        scale = d_in / bound
    else:
        scale = d_in / math.sqrt(2 * bound)
    for _ in range(_NUDGES):
        measurement = build_measurement(definition, scale)
        if measurement.check(d_in, bound):
            return scale, measurement
        scale = math.nextafter(scale, math.inf)
    builder: Callable[[float], dp.Measurement] = lambda s: build_measurement(  # noqa: E731
        definition, s
    )
    scale = float(dp.binary_search_param(builder, d_in=d_in, d_out=bound))
    measurement = build_measurement(definition, scale)
    # Every path returns a measurement confirmed by its own check, and only such a one.
    if not measurement.check(d_in, bound):
        raise ValueError(f"no scale confirms a loss of {bound} at sensitivity {sensitivity}")
    return scale, measurement


def plan_for_accuracy(
    definition: Definition, sensitivity: float, max_error: float, alpha: float
) -> Plan:
    """The cheapest plan whose values are within ``max_error`` with probability >= 1 - alpha.

    The scale is the largest whose OpenDP accuracy is within ``max_error``; the cost is the
    privacy map at ``sensitivity`` rounded UP to the next nano-unit, so the charge always
    covers the loss.
    """
    scale = _scale_for_accuracy(definition, max_error, alpha)
    measurement = build_measurement(definition, scale)
    d_in = _distance(definition, sensitivity)
    cost = ceil_nano(float(measurement.map(d_in)))  # type: ignore[no-untyped-call]
    if not measurement.check(d_in, float_at_most(cost)):
        raise ValueError(f"the measurement at scale {scale} does not confirm cost {cost}")
    return _plan(definition, sensitivity, scale, cost, alpha, measurement)


def _plan(
    definition: Definition,
    sensitivity: float,
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

    Each true value is first clamped to the 64-bit range of the measurement's domain, so no
    value the data holds can make a release fail. Clamping never moves two values further
    apart, so neighbouring inputs stay within the plan's sensitivity. Call only once the
    plan's cost is known to fit; the output must not leave the service unless the charge
    commits.
    """
    global _draws
    with _draws_lock:
        _draws += 1
    clamped = [min(max(int(value), INT64_MIN), INT64_MAX) for value in vector]
    released = plan.measurement(clamped)
    return [int(value) for value in released]
