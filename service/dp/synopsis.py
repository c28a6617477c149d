"""Synopses: measure a dataset's declared marginals once, answer from one consistent table.

A synopsis is built in three steps, the first before any data is read:

1. :func:`design` prices one OpenDP count measurement per declared marginal. The synopsis
   budget is split over the marginals to minimise the expected squared error of the
   declared workload (every cell of every declared marginal, after least squares), and the
   exact shares add up to the budget to the nano-unit. Sensitivities come from the query
   engine's plans, so from ``service.dp.sensitivity`` alone.
2. :func:`measure` draws the noise: each marginal's true counts through its OpenDP plan
   (discrete Gaussian under zCDP, discrete Laplace under pure DP). Call it only after
   ``design.cost`` is charged.
3. :func:`estimate` post-processes the noisy marginals into one table over the dimensions
   the marginals use: least squares weighted by each measurement's noise variance, with the
   cells bounded below by 0 (``scipy.optimize.nnls``, Lawson-Hanson; about a millisecond
   for 288 cells where ``lsq_linear`` takes a second), then rounded to integers by
   largest remainders so that the table's total is the rounded total of the fit. Every
   answer is a sum over that one integer table, so any two answers add up exactly. The
   unconstrained least-squares fit is kept beside it, for the intervals.

:func:`answer` sums the table for a count whose group-by and filtered dimensions lie in
one declared marginal, with a (1 - alpha) interval from the least-squares estimator: for a
query ``q`` in the row space of the measurements, ``q x`` is unbiased with ``Var(q x) =
q M+ q'``, ``M = sum_i A_i' A_i / v_i``, so ``q x ± z sd`` covers the truth at the stated
rate. The non-negative fit is not unbiased: on a sparse table it lifts every cell the noise
pushed below zero, and a sum over many cells drifts upwards by far more than its standard
deviation. So the interval is centred on the unbiased estimate and widened, where needed,
to hold the published value; it covers at least as often as the unbiased one. Marginals of
one product table share an eigenbasis (each dimension's constant vector and its
complement), so ``M+``, the unbiased fit and the budget split's objective are computed
exactly from a handful of eigenvalues, never by inverting a matrix.

The module is long because design, fit and answer share that eigenbasis arithmetic: the
budget split minimises the very variance that the answers' intervals report, so the two
must come from one piece of code.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize, nnls

from service.crypto.signing import canonical_json
from service.dp.accounting import NANO, to_nano
from service.dp.engine import QueryPlan, plan_query
from service.dp.mechanisms import noisy
from service.dp.query import DEFAULT_ALPHA, Query, group_cells
from service.json_input import HostileJson, load_json
from service.policy.model import DatasetPolicy, Definition, SynopsisPolicy

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# No marginal gets less than this share of the budget: a marginal the optimiser would
# starve still answers its own questions with bounded noise.
MIN_SHARE = 0.02


class NotInSynopsis(ValueError):
    """The question is not a sum over cells of one declared marginal."""

    def __init__(
        self, marginals: Sequence[Sequence[str]], used: Sequence[str], statistic: str = "count"
    ) -> None:
        self.marginals = [list(marginal) for marginal in marginals]
        named = "; ".join("[" + ", ".join(marginal) + "]" for marginal in marginals)
        dims = ", ".join(used) if used else "(none)"
        what = (
            f"the dimensions {dims} do not lie in one declared marginal of the synopsis"
            if statistic == "count"
            else f"a synopsis answers counts, not {statistic}"
        )
        super().__init__(f"{what} (marginals: {named}); ask a direct query with a cost instead")


@dataclass(frozen=True)
class SynopsisDesign:
    """The priced measurements of a synopsis, decided before any data is read.

    ``plans`` holds one count plan per marginal (``marginals`` in policy order); their costs
    add up exactly to ``cost``, the synopsis budget. ``variances`` is each measurement's
    per-cell noise variance (an upper bound for the discrete Gaussian).
    """

    dataset: str
    definition: Definition
    dimensions: tuple[str, ...]
    sizes: tuple[int, ...]
    marginals: tuple[tuple[str, ...], ...]
    plans: tuple[QueryPlan, ...]
    variances: tuple[float, ...]
    shares: tuple[Fraction, ...]
    cost: Fraction


@dataclass(frozen=True)
class Estimate:
    """The post-processed synopsis: one non-negative integer table and what it rests on.

    ``unbiased`` is the unconstrained least-squares fit, the centre of the answers'
    intervals; None for a synopsis stored before it was kept, whose intervals are centred
    on the table (see :func:`answer`).
    """

    dimensions: tuple[str, ...]
    sizes: tuple[int, ...]
    marginals: tuple[tuple[str, ...], ...]
    variances: tuple[float, ...]
    definition: Definition
    table: tuple[int, ...]
    unbiased: tuple[float, ...] | None


@dataclass(frozen=True)
class SynopsisValue:
    """One answered cell: group-by values, the integer value, its (1 - alpha) interval."""

    cell: tuple[str, ...]
    value: int
    ci: tuple[int, int]


def table_dimensions(dataset: DatasetPolicy, synopsis: SynopsisPolicy) -> tuple[str, ...]:
    """The dimensions the marginals use, in policy order: the axes of the synopsis table."""
    used = {name for marginal in synopsis.marginals for name in marginal}
    return tuple(d.name for d in dataset.dimensions if d.name in used)


def design(dataset: DatasetPolicy, alpha: float = DEFAULT_ALPHA) -> SynopsisDesign:
    """Price the synopsis declared by ``dataset``'s policy: split, scales, exact costs."""
    synopsis = dataset.synopsis
    if synopsis is None:
        raise ValueError(f"dataset {dataset.id} declares no synopsis")
    dimensions = table_dimensions(dataset, synopsis)
    sizes = tuple(len(dataset.dimension(name).values) for name in dimensions)
    marginals = synopsis.marginals
    members = tuple(_axes(dimensions, marginal) for marginal in marginals)
    # The sensitivity of each marginal is the engine's, for the same count query.
    sensitivities = tuple(
        plan_query(_marginal_query(dataset, marginal, synopsis.budget, alpha), dataset).sensitivity
        for marginal in marginals
    )
    weights = budget_split(dataset.definition, sizes, members, sensitivities)
    shares = exact_shares(synopsis.budget, weights)
    plans = tuple(
        plan_query(_marginal_query(dataset, marginal, share, alpha), dataset)
        for marginal, share in zip(marginals, shares, strict=True)
    )
    variances = tuple(noise_variance(dataset.definition, plan.scale) for plan in plans)
    return SynopsisDesign(
        dataset=dataset.id,
        definition=dataset.definition,
        dimensions=dimensions,
        sizes=sizes,
        marginals=marginals,
        plans=plans,
        variances=variances,
        shares=shares,
        cost=sum(shares, Fraction(0)),
    )


def noise_variance(definition: Definition, scale: float) -> float:
    """Per-cell variance of OpenDP's noise at ``scale``.

    Discrete Laplace with scale ``b``: exactly ``2 e^(-1/b) / (1 - e^(-1/b))^2``. Discrete
    Gaussian with scale ``s``: at most ``s^2`` (the discrete distribution is never wider
    than the continuous one), used as is, so intervals err on the wide side.
    """
    if definition == "pure":
        decay = math.exp(-1.0 / scale)
        return 2.0 * decay / (1.0 - decay) ** 2
    return float(scale) ** 2


def budget_split(
    definition: Definition,
    sizes: Sequence[int],
    members: Sequence[Sequence[int]],
    sensitivities: Sequence[float],
) -> tuple[float, ...]:
    """Shares of the budget (summing to 1) minimising the workload's total error.

    The workload is every cell of every declared marginal, each weighted equally; its total
    variance after least squares is ``sum_i tr(A_i M+ A_i')``, computed exactly from the
    eigenvalues of ``M``. Under zCDP a marginal's precision grows linearly with its share
    (``1/v = 2 rho w / d^2``), under pure DP quadratically (``1/v ~ (eps w)^2 / 2 d^2``). The
    objective is convex in the precisions; SLSQP finds the optimum from the equal split.
    """
    count = len(members)
    if count == 1:
        return (1.0,)
    power = 1 if definition == "zcdp" else 2
    base = np.array([1.0 / float(d) ** 2 for d in sensitivities])

    def objective(weights: FloatArray) -> float:
        precisions = base * np.maximum(weights, 1e-12) ** power
        return workload_variance(sizes, members, precisions)

    start = np.full(count, 1.0 / count)
    result = minimize(
        objective,
        start,
        method="SLSQP",
        bounds=[(MIN_SHARE, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)}],
        options={"ftol": 1e-10, "maxiter": 200},
    )
    weights = result.x if result.success else start
    if objective(weights) > objective(start):
        weights = start
    weights = np.clip(weights, MIN_SHARE, 1.0)
    return tuple(float(w) for w in weights / np.sum(weights))


def exact_shares(budget: Fraction, weights: Sequence[float]) -> tuple[Fraction, ...]:
    """Split ``budget`` by ``weights`` into whole nano-units that add up to it exactly."""
    total = to_nano(budget)
    parts = [max(1, math.floor(total * weight)) for weight in weights[:-1]]
    last = total - sum(parts)
    if last < 1:
        raise ValueError(
            f"a budget of {budget} is too small to split over {len(weights)} marginals"
        )
    return tuple(Fraction(part, NANO) for part in [*parts, last])


def workload_variance(
    sizes: Sequence[int], members: Sequence[Sequence[int]], precisions: FloatArray
) -> float:
    """``sum_i tr(A_i M+ A_i')`` for marginals ``members`` (axis indices) at ``precisions``."""
    total = 0.0
    eigen = _eigenvalues(tuple(sizes), tuple(tuple(m) for m in members), tuple(precisions))
    for marginal in members:
        reach = _reach(sizes, marginal)
        for subset, (multiplicity, value) in eigen.items():
            if set(subset) <= set(marginal):
                total += multiplicity * reach / value
    return total


def measure(design: SynopsisDesign, true_counts: Sequence[Sequence[int]]) -> list[list[int]]:
    """One OpenDP release per marginal. Call only after ``design.cost`` is durably charged."""
    return [
        noisy(plan.primary, list(counts))
        for plan, counts in zip(design.plans, true_counts, strict=True)
    ]


def estimate(design: SynopsisDesign, measured: Sequence[Sequence[int]]) -> Estimate:
    """The non-negative integer table whose marginals best fit the noisy measurements.

    Least squares weighted by ``1 / variance`` under ``cells >= 0`` (non-negative least
    squares: the fitted marginals are unique even where the table itself is not, since the
    objective is strictly convex in them), then largest-remainder
    rounding: each cell is floored and the cells with the largest remainders get one more,
    until the table total equals the rounded total of the fit. Also the unconstrained
    least-squares fit (:func:`unbiased_fit`), from the same measurements.
    """
    members = tuple(_axes(design.dimensions, marginal) for marginal in design.marginals)
    matrices = [_marginal_matrix(design.sizes, axes) for axes in members]
    weights = [1.0 / math.sqrt(variance) for variance in design.variances]
    stacked = np.vstack([matrix * weight for matrix, weight in zip(matrices, weights, strict=True)])
    target = np.concatenate(
        [
            np.asarray(values, dtype=np.float64) * w
            for values, w in zip(measured, weights, strict=True)
        ]
    )
    fitted, _residual = nnls(stacked, target)
    table = round_table(np.maximum(fitted, 0.0))
    unbiased = unbiased_fit(design.sizes, members, design.variances, measured)
    return Estimate(
        dimensions=design.dimensions,
        sizes=design.sizes,
        marginals=design.marginals,
        variances=design.variances,
        definition=design.definition,
        table=tuple(int(v) for v in table),
        unbiased=tuple(float(v) for v in unbiased),
    )


def unbiased_fit(
    sizes: Sequence[int],
    members: Sequence[Sequence[int]],
    variances: Sequence[float],
    measured: Sequence[Sequence[int]],
) -> FloatArray:
    """The minimum-norm weighted least-squares table ``M+ sum_i A_i' y_i / v_i`` (C order).

    ``M+`` is applied through its eigenspaces: on the space of a subset S of axes it is
    ``1 / eigenvalue`` times the projection that centres the table along the axes in S and
    averages it along the others. Its sums over the cells of any declared marginal are the
    unbiased least-squares estimates, unique although the table itself is not.
    """
    shape = tuple(sizes)
    spread = np.zeros(shape)
    for marginal, variance, values in zip(members, variances, measured, strict=True):
        counts = np.asarray(values, dtype=np.float64).reshape([shape[a] for a in marginal])
        expanded = np.expand_dims(counts, [a for a in range(len(shape)) if a not in marginal])
        spread += np.broadcast_to(expanded, shape) / variance
    eigen = _eigenvalues(shape, tuple(tuple(m) for m in members), tuple(1.0 / v for v in variances))
    fit = np.zeros(shape)
    for subset, (_multiplicity, value) in eigen.items():
        projected = spread
        for axis in range(len(shape)):
            mean = projected.mean(axis=axis, keepdims=True)
            projected = projected - mean if axis in subset else np.broadcast_to(mean, shape)
        fit += projected / value
    return fit.reshape(-1)


def encode_estimate(estimate: Estimate) -> bytes:
    """The estimate as canonical JSON bytes (the plaintext a synopsis is sealed from):
    format 2, or format 1 for an estimate without the unbiased fit."""
    data: dict[str, Any] = {
        "version": 1 if estimate.unbiased is None else 2,
        "dimensions": list(estimate.dimensions),
        "sizes": list(estimate.sizes),
        "marginals": [list(marginal) for marginal in estimate.marginals],
        "variances": list(estimate.variances),
        "definition": estimate.definition,
        "table": list(estimate.table),
    }
    if estimate.unbiased is not None:
        data["unbiased"] = list(estimate.unbiased)
    return canonical_json(data)


def decode_estimate(plaintext: bytes) -> Estimate:
    """The estimate :func:`encode_estimate` wrote (format 2, or 1 without the unbiased fit);
    ``ValueError`` for anything else, including numbers of the wrong kind, non-finite ones
    and variances that are not positive, which no build writes."""
    try:
        # NaN, infinities and repeated keys are refused like a caller's; a synopsis nests
        # three levels deep (its marginals).
        data = load_json(plaintext, max_depth=3)
        version = data.get("version")
        if version not in (1, 2) or ("unbiased" in data) != (version == 2):
            raise ValueError(f"unknown synopsis format {version!r}")
        definition = data["definition"]
        if definition not in ("zcdp", "pure"):
            raise ValueError(f"unknown synopsis privacy definition {definition!r}")
        estimate = Estimate(
            dimensions=tuple(_strings(data["dimensions"])),
            sizes=_integers(data["sizes"], minimum=1),
            marginals=tuple(tuple(_strings(marginal)) for marginal in data["marginals"]),
            variances=_finite(data["variances"], positive=True),
            definition=definition,
            table=_integers(data["table"], minimum=0),
            unbiased=_finite(data["unbiased"]) if version == 2 else None,
        )
    except HostileJson as error:
        raise ValueError(f"unreadable synopsis ({error})") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable synopsis ({type(error).__name__})") from None
    if (
        len(estimate.table) != math.prod(estimate.sizes)
        or (estimate.unbiased is not None and len(estimate.unbiased) != len(estimate.table))
        or len(estimate.variances) != len(estimate.marginals)
        or any(set(m) - set(estimate.dimensions) for m in estimate.marginals)
    ):
        raise ValueError("unreadable synopsis (its parts do not match its dimensions)")
    return estimate


def _strings(values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("expected a list of strings")
    return values


def _integers(values: Any, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(type(v) is int and v >= minimum for v in values):
        raise TypeError(f"expected a list of integers of at least {minimum}")
    return tuple(values)


def _finite(values: Any, *, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(
        type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in values
    ):
        raise TypeError("expected a list of finite numbers")
    return tuple(float(v) for v in values)


def round_table(values: FloatArray) -> IntArray:
    """Non-negative integers near ``values`` whose sum is ``round(sum(values))``."""
    floors = np.floor(values).astype(np.int64)
    short = int(round(float(np.sum(values)))) - int(np.sum(floors))
    if short > 0:
        order = np.argsort(-(values - floors), kind="stable")
        floors[order[:short]] += 1
    return floors


def covering_marginal(
    marginals: Sequence[Sequence[str]], used: Sequence[str]
) -> tuple[str, ...] | None:
    """The first declared marginal holding every dimension in ``used``, or None."""
    for marginal in marginals:
        if set(used) <= set(marginal):
            return tuple(marginal)
    return None


def answer(estimate: Estimate, query: Query, dataset: DatasetPolicy) -> list[SynopsisValue]:
    """A count query answered from the table, with (1 - alpha) intervals.

    Each interval is ``floor(c - z sd)`` to ``ceil(c + z sd)``, ``c`` the unbiased
    estimate, widened to hold the value and clipped at 0. A synopsis stored without the
    unbiased fit centres it on the value instead, as it was built to.

    Raises :class:`NotInSynopsis` when the query's group-by and filtered dimensions do not
    all lie in one declared marginal (such a sum is not determined by the measurements).
    """
    if query.statistic != "count":
        raise NotInSynopsis(estimate.marginals, [], statistic=query.statistic)
    used = [*query.group_by, *(name for name, _ in query.filters)]
    marginal = covering_marginal(estimate.marginals, used)
    if marginal is None:
        raise NotInSynopsis(estimate.marginals, sorted(set(used)))
    # Indicator rows: output cell x cell of the marginal (C order over the marginal's axes).
    domains = [dataset.dimension(name).values for name in marginal]
    width = math.prod(len(values) for values in domains)
    position = np.unravel_index(np.arange(width), tuple(len(values) for values in domains))
    kept = np.ones(width, dtype=bool)
    for name, values in query.filters:
        axis = marginal.index(name)
        allowed = [domains[axis].index(value) for value in values]
        kept &= np.isin(position[axis], allowed)
    outputs = group_cells(query, dataset)
    target = np.zeros(width, dtype=np.int64)
    for name in query.group_by:
        axis = marginal.index(name)
        # A grouped dimension that is also filtered ranges over the filter's values only.
        values = query.filter_values(name) or domains[axis]
        lookup = np.full(len(domains[axis]), 0, dtype=np.int64)
        for rank, value in enumerate(values):
            lookup[domains[axis].index(value)] = rank
        target = target * len(values) + lookup[position[axis]]
    rows = np.zeros((len(outputs), width))
    rows[target[kept], np.arange(width)[kept]] = 1.0
    axes = _axes(estimate.dimensions, marginal)
    sums = rows.astype(np.int64) @ _marginal_of(estimate.table, estimate.sizes, axes, np.int64)
    centres = (
        rows @ _marginal_of(estimate.unbiased, estimate.sizes, axes, np.float64)
        if estimate.unbiased is not None
        else sums.astype(np.float64)
    )
    covariance = marginal_covariance(estimate.sizes, _members(estimate), estimate.variances, axes)
    variances = np.einsum("ij,jk,ik->i", rows, covariance, rows)
    multiplier = interval_multiplier(estimate.definition, query.alpha)
    result = []
    for output, value, centre, variance in zip(outputs, sums, centres, variances, strict=True):
        half = multiplier * math.sqrt(max(float(variance), 0.0))
        low = min(int(value), math.floor(float(centre) - half))
        high = max(int(value), math.ceil(float(centre) + half))
        result.append(SynopsisValue(output, int(value), (max(low, 0), high)))
    return result


def _marginal_of(
    table: Sequence[float], sizes: Sequence[int], axes: Sequence[int], dtype: type
) -> npt.NDArray[Any]:
    """The cells of ``table`` summed into the marginal over ``axes``, flattened (C order)."""
    shaped: npt.NDArray[Any] = np.asarray(table, dtype=dtype).reshape(tuple(sizes))
    summed = tuple(a for a in range(len(sizes)) if a not in axes)
    return (shaped.sum(axis=summed) if summed else shaped).reshape(-1)


def interval_multiplier(definition: Definition, alpha: float) -> float:
    """Standard deviations to each side of a (1 - alpha) interval.

    zCDP: sums of discrete Gaussians are (nearly) normal, so the normal quantile. Pure DP:
    the larger of the normal quantile and that of a single Laplace of the same variance
    (``ln(1/alpha) / sqrt 2``), whose tail is the heaviest a sum of Laplace noises can have.
    """
    normal = NormalDist().inv_cdf(1 - alpha / 2)
    if definition == "zcdp":
        return normal
    return max(normal, math.log(1 / alpha) / math.sqrt(2))


def marginal_covariance(
    sizes: Sequence[int],
    members: Sequence[Sequence[int]],
    variances: Sequence[float],
    axes: Sequence[int],
) -> FloatArray:
    """``A_m M+ A_m'``: the covariance of the estimated cells of the marginal over ``axes``."""
    return _covariance(
        tuple(sizes),
        tuple(tuple(m) for m in members),
        tuple(1.0 / v for v in variances),
        tuple(axes),
    ).copy()


@functools.lru_cache(maxsize=64)
def _covariance(
    sizes: tuple[int, ...],
    members: tuple[tuple[int, ...], ...],
    precisions: tuple[float, ...],
    axes: tuple[int, ...],
) -> FloatArray:
    eigen = _eigenvalues(sizes, members, precisions)
    reach = _reach(sizes, axes)
    width = math.prod(sizes[a] for a in axes)
    covariance = np.zeros((width, width))
    for subset, (_multiplicity, value) in eigen.items():
        if not set(subset) <= set(axes):
            continue
        factor = np.ones((1, 1))
        for axis in axes:
            n = sizes[axis]
            block = np.eye(n) - 1.0 / n if axis in subset else np.full((n, n), 1.0 / n)
            factor = np.kron(factor, block)
        covariance += (reach / value) * factor
    return covariance


@functools.lru_cache(maxsize=256)
def _eigenvalues(
    sizes: tuple[int, ...], members: tuple[tuple[int, ...], ...], precisions: tuple[float, ...]
) -> dict[tuple[int, ...], tuple[int, float]]:
    """Each non-zero eigenspace of ``M``: subset S of axes -> (multiplicity, eigenvalue).

    On the space of S (non-constant along the axes in S, constant along the others),
    ``A_i' A_i`` acts as ``prod of sizes outside marginal i`` when S lies in marginal i,
    and as 0 otherwise.
    """
    spaces: dict[tuple[int, ...], tuple[int, float]] = {}
    for marginal, precision in zip(members, precisions, strict=True):
        reach = _reach(sizes, marginal)
        for length in range(len(marginal) + 1):
            for subset in itertools.combinations(marginal, length):
                multiplicity = math.prod(sizes[a] - 1 for a in subset)
                if multiplicity == 0:
                    continue
                _, value = spaces.get(subset, (multiplicity, 0.0))
                spaces[subset] = (multiplicity, value + float(precision) * reach)
    return spaces


def _reach(sizes: Sequence[int], marginal: Sequence[int]) -> int:
    """How many table cells fall into one cell of the marginal."""
    return math.prod(size for axis, size in enumerate(sizes) if axis not in marginal)


def _members(estimate: Estimate) -> tuple[tuple[int, ...], ...]:
    return tuple(_axes(estimate.dimensions, marginal) for marginal in estimate.marginals)


def _axes(dimensions: Sequence[str], marginal: Sequence[str]) -> tuple[int, ...]:
    return tuple(sorted(dimensions.index(name) for name in marginal))


def _marginal_matrix(sizes: Sequence[int], axes: Sequence[int]) -> FloatArray:
    """The 0/1 matrix summing the table (C order) into the marginal over ``axes``."""
    total = math.prod(sizes)
    coordinates = np.unravel_index(np.arange(total), tuple(sizes))
    kept = tuple(coordinates[a] for a in axes)
    width = math.prod(sizes[a] for a in axes)
    rows = (
        np.ravel_multi_index(kept, tuple(sizes[a] for a in axes))
        if axes
        else np.zeros(total, dtype=np.int64)
    )
    matrix = np.zeros((width, total))
    matrix[rows, np.arange(total)] = 1.0
    return matrix


def _marginal_query(
    dataset: DatasetPolicy, marginal: Sequence[str], cost: Fraction, alpha: float
) -> Query:
    return Query(
        dataset=dataset.id,
        statistic="count",
        measure=None,
        group_by=tuple(marginal),
        filters=(),
        cost=cost,
        accuracy=None,
        alpha=alpha,
        budget_unit=dataset.budget_unit,
    )
