"""The entry point of the DP engine: price a query, then release its noisy values.

The service calls :func:`plan_query` (pure, no noise: cost, mechanism, accuracy, for
estimates and for the charge), checks that ``plan.cost`` fits the budgets, calls
:func:`release_values` on the true aggregates, and lets the output leave only once the
charge and the release are committed together: output that was not paid for never leaves.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from service.crypto.signing import canonical_json
from service.dp.accounting import MIN_COST, epsilon_at_delta
from service.dp.aggregate import TrueAggregates
from service.dp.errors import InvalidQuery
from service.dp.mechanisms import (
    MechanismName,
    Plan,
    mechanism_name,
    noisy,
    plan_for_accuracy,
    plan_for_cost,
    serialized,
)
from service.dp.query import Query, group_cells, merged_cells
from service.dp.sensitivity import sensitivity
from service.policy.amounts import amount_text
from service.policy.model import BUDGET_UNITS, DatasetPolicy, Definition

Component = Literal["count", "sum"]


@dataclass(frozen=True)
class QueryPlan:
    """Everything a query will cost and promise, decided before any noise is drawn.

    ``plans`` holds one priced measurement per released vector: ``{"count": …}``,
    ``{"sum": …}``, or for a mean ``{"sum": …, "count": …}`` (each at ``alpha / 2``, so the
    mean's interval holds at ``1 - alpha`` by the union bound). ``cost`` is the exact total
    to charge, in the dataset's unit (epsilon or rho). ``max_error`` is the whole-number
    half-width of every value's interval, or None for a mean, whose interval depends on the
    noisy count and is given per value.
    """

    query: Query
    definition: Definition
    mechanism: MechanismName
    plans: Mapping[Component, Plan]
    cost: Fraction
    alpha: float
    max_error: float | None
    delta: float
    epsilon: float
    measure_bounds: tuple[int, int] | None

    @property
    def primary(self) -> Plan:
        """The plan of the statistic's own vector (the sum's for a mean)."""
        return self.plans["count"] if self.query.statistic == "count" else self.plans["sum"]

    @property
    def sensitivity(self) -> float:
        return self.primary.sensitivity

    @property
    def scale(self) -> float:
        return self.primary.scale


@dataclass(frozen=True)
class NoisyValue:
    """One released cell: its group-by values, the noisy value and its (1 - alpha) interval."""

    cell: tuple[str, ...]
    value: int | float
    ci: tuple[int, int] | tuple[float, float]


def plan_query(query: Query, dataset: DatasetPolicy) -> QueryPlan:
    """Price ``query`` on ``dataset``: sensitivity, scale, exact cost and accuracy. No noise.

    For a mean, a noisy sum and a noisy count are released. With a cost, each gets exactly
    half. With an accuracy target, ``max_error`` is met by the noisy count (in contacts, at
    ``alpha / 2``) and the sum gets the same cost, so its noise is the measure's magnitude
    times wider: the two noises then weigh equally in the mean. The mean's own error depends
    on the count, so it is reported per value as an interval.
    """
    if query.dataset != dataset.id:
        raise InvalidQuery("dataset", f"{query.dataset!r} does not match {dataset.id!r}")
    definition = dataset.definition
    statistic = query.statistic
    measure = dataset.measure(query.measure) if query.measure is not None else None
    sensitivities: dict[Component, float] = {
        name: _sensitivity(name, query, dataset) for name in ("count", "sum")
    }
    plans: dict[Component, Plan]
    if statistic in ("count", "sum"):
        single: Component = "count" if statistic == "count" else "sum"
        if query.cost is not None:
            plan = plan_for_cost(definition, sensitivities[single], query.cost, query.alpha)
        else:
            target = _target(query)
            plan = plan_for_accuracy(definition, sensitivities[single], target, query.alpha)
        plans = {single: plan}
    else:
        half_alpha = query.alpha / 2
        if query.cost is not None:
            half = query.cost / 2
            count_plan = plan_for_cost(definition, sensitivities["count"], half, half_alpha)
        else:
            count_plan = plan_for_accuracy(
                definition, sensitivities["count"], _target(query), half_alpha
            )
        sum_plan = plan_for_cost(definition, sensitivities["sum"], count_plan.cost, half_alpha)
        plans = {"sum": sum_plan, "count": count_plan}
    cost = sum((plan.cost for plan in plans.values()), Fraction(0))
    if query.accuracy is not None and cost < MIN_COST:
        # The same floor as an explicit cost: a target this loose buys only noise, at a scale
        # whose values no longer fit their own intervals.
        raise InvalidQuery(
            "accuracy.max_error",
            f"{query.accuracy.max_error} implies a cost below the minimum "
            f"{amount_text(MIN_COST)}; ask for a smaller max_error",
        )
    if definition == "pure":
        delta, epsilon = 0.0, float(cost)
    else:
        if dataset.delta is None:
            raise ValueError(f"zCDP dataset {dataset.id} declares no delta")
        delta = float(dataset.delta)
        epsilon = epsilon_at_delta(cost, delta)
    return QueryPlan(
        query=query,
        definition=definition,
        mechanism=mechanism_name(definition),
        plans=plans,
        cost=cost,
        alpha=query.alpha,
        max_error=None if statistic == "mean" else whole_width(plans[_single(statistic)].accuracy),
        delta=delta,
        epsilon=epsilon,
        measure_bounds=(measure.lower, measure.upper) if measure is not None else None,
    )


class PlanCache:
    """Plans already priced, by policy version and query: a bounded LRU.

    A plan is a pure function of the dataset policy and the canonical query, and building
    one (OpenDP measurement, privacy map, accuracy) costs milliseconds, so a repeated or
    concurrent question is priced once per process. The dataset policy a plan was built
    from is kept beside it and must be the very object asked with, so a plan can never
    outlive the policy set it was priced under, even during a reload.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._plans: OrderedDict[tuple[str, Query], tuple[DatasetPolicy, QueryPlan]] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, version: str, query: Query, dataset: DatasetPolicy) -> QueryPlan:
        """``plan_query(query, dataset)``, from the cache when it holds it."""
        key = (version, query)
        with self._lock:
            hit = self._plans.get(key)
            if hit is not None and hit[0] is dataset:
                self._plans.move_to_end(key)
                return hit[1]
        # Priced outside the lock: two threads may price the same query at once, and
        # both get equal plans.
        plan = plan_query(query, dataset)
        with self._lock:
            self._plans[key] = (dataset, plan)
            self._plans.move_to_end(key)
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan


def release_values(plan: QueryPlan, aggregates: TrueAggregates) -> list[NoisyValue]:
    """Draw the noise: one OpenDP release per planned vector, then post-process.

    The output may leave only once ``plan.cost`` is charged. Intervals only use public
    facts (counts and sums of a non-negative measure are >= 0; a mean lies within the
    measure's bounds), so clipping them keeps their coverage.
    """
    statistic = plan.query.statistic
    if statistic == "count":
        counts = noisy(plan.plans["count"], aggregates.counts)
        half_width = whole_width(plan.plans["count"].accuracy)
        return [
            NoisyValue(cell, value, _interval(value, half_width, 0, None))
            for cell, value in zip(aggregates.cells, counts, strict=True)
        ]
    if aggregates.sums is None or plan.measure_bounds is None:
        raise ValueError(f"a {statistic} release needs measure sums")
    lower, upper = plan.measure_bounds
    sums = noisy(plan.plans["sum"], aggregates.sums)
    sum_width = whole_width(plan.plans["sum"].accuracy)
    if statistic == "sum":
        floor = 0 if lower >= 0 else None
        ceiling = 0 if upper <= 0 else None
        return [
            NoisyValue(cell, value, _interval(value, sum_width, floor, ceiling))
            for cell, value in zip(aggregates.cells, sums, strict=True)
        ]
    counts = noisy(plan.plans["count"], aggregates.counts)
    count_width = whole_width(plan.plans["count"].accuracy)
    return [
        _mean_value(cell, noisy_sum, noisy_count, sum_width, count_width, lower, upper)
        for cell, noisy_sum, noisy_count in zip(aggregates.cells, sums, counts, strict=True)
    ]


def plan_summary(plan: QueryPlan) -> dict[str, Any]:
    """The JSON-able description of a plan, for estimates and releases.

    ``privacy`` gives the cost as numbers and, exactly, as a decimal string under ``cost``;
    for zCDP also epsilon at the dataset's delta. A mean lists its two measurements under
    ``components``; its top-level scale and sensitivity are the sum's.
    """
    unit = BUDGET_UNITS[plan.definition]
    privacy: dict[str, Any] = {"definition": plan.definition}
    if plan.definition == "zcdp":
        privacy["rho"] = float(plan.cost)
    privacy.update(
        {"epsilon": plan.epsilon, "delta": plan.delta, "cost": {unit: amount_text(plan.cost)}}
    )
    mechanism: dict[str, Any] = {
        "name": plan.mechanism,
        "scale": readable_scale(plan.scale),
        "sensitivity": plan.sensitivity,
    }
    accuracy: dict[str, Any] = {"alpha": plan.alpha, "max_error": plan.max_error}
    if plan.query.statistic == "mean":
        mechanism["components"] = {
            name: {
                "scale": readable_scale(component.scale),
                "sensitivity": component.sensitivity,
                "cost": {unit: amount_text(component.cost)},
            }
            for name, component in plan.plans.items()
        }
        accuracy["components"] = {
            name: {"alpha": component.alpha, "max_error": whole_width(component.accuracy)}
            for name, component in plan.plans.items()
        }
    return {"privacy": privacy, "mechanism": mechanism, "accuracy": accuracy}


def measurement_json(plan: QueryPlan) -> str:
    """The OpenDP measurement(s) as JSON: one serialized measurement, or for a mean an object
    ``{"sum": …, "count": …}`` of two, each readable by ``dp.deserialize``."""
    if plan.query.statistic != "mean":
        return serialized(plan.primary)
    parts = {name: json.loads(serialized(part)) for name, part in plan.plans.items()}
    return canonical_json(parts).decode("utf-8")


def whole_width(accuracy: float) -> int:
    """The half-width, in whole units, of the interval around one released integer value.

    Counts and sums of integer measures plus discrete noise are integers, so the noise lies
    within ``accuracy`` exactly when it lies within ``floor(accuracy)``: the floor keeps the
    (1 - alpha) coverage of OpenDP's accuracy and gives an interval of whole numbers.
    """
    return math.floor(accuracy)


def readable_scale(scale: float) -> float:
    """A noise scale as people read it: 10 significant digits, so 50.00000000000001 shows 50.0.

    Only the description is rounded; the stored OpenDP measurement keeps the exact scale.
    """
    return float(f"{scale:.10g}")


def _single(statistic: str) -> Component:
    return "count" if statistic == "count" else "sum"


def _target(query: Query) -> float:
    if query.accuracy is None:
        raise ValueError("a query needs a cost or an accuracy target")
    return query.accuracy.max_error


def _sensitivity(component: Component, query: Query, dataset: DatasetPolicy) -> float:
    """Sensitivity of one released vector of ``query`` under the dataset's bounds.

    A per-cell bound holds for stored cells; an output cell that merges ``n`` of them can
    hold up to ``n`` times that of one person (never more than the per-person bound). A
    person reaches at most as many cells as the vector has.
    """
    total = dataset.max_contacts_per_person
    per_cell = dataset.max_contacts_per_cell
    if per_cell is not None:
        per_cell = min(total, per_cell * merged_cells(query, dataset))
    magnitude = 1
    if component == "sum":
        if query.measure is None:
            return 0
        magnitude = dataset.measure(query.measure).magnitude
    return sensitivity(
        component,
        "l1" if dataset.definition == "pure" else "l2",
        max_contacts_per_person=total,
        max_contacts_per_cell=per_cell,
        measure_magnitude=magnitude,
        output_cells=len(group_cells(query, dataset)),
    )


def _interval(
    value: int, half_width: int, floor: int | None, ceiling: int | None
) -> tuple[int, int]:
    low, high = value - half_width, value + half_width
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    if ceiling is not None:
        low, high = min(low, ceiling), min(high, ceiling)
    return (low, high)


def _mean_value(
    cell: tuple[str, ...],
    noisy_sum: int,
    noisy_count: int,
    sum_width: int,
    count_width: int,
    lower: int,
    upper: int,
) -> NoisyValue:
    """The mean of one cell as post-processing of its noisy sum and count.

    With probability >= 1 - alpha both true values lie in their intervals (alpha / 2 each);
    the true mean (of a cell with at least one contact) then lies between the extreme
    ratios of the two intervals' corners, clipped to the measure's bounds. The result is
    rounded to what its interval can tell apart (:func:`rounded_mean`).
    """

    def clip(x: float) -> float:
        return float(min(max(x, lower), upper))

    count_high = noisy_count + count_width
    if count_high < 1:
        # The count interval says the cell is (almost surely) empty: nothing to bound.
        return rounded_mean(cell, clip((lower + upper) / 2), float(lower), float(upper))
    count_low = max(noisy_count - count_width, 1.0)
    sum_low, sum_high = noisy_sum - sum_width, noisy_sum + sum_width
    low = min(sum_low / count_low, sum_low / count_high)
    high = max(sum_high / count_low, sum_high / count_high)
    value = clip(noisy_sum / max(noisy_count, 1))
    return rounded_mean(cell, value, clip(low), clip(high))


MEAN_DIGITS_MAX = 6
"""The finest a mean is ever shown: a millionth of the measure's unit."""


def rounded_mean(cell: tuple[str, ...], value: float, low: float, high: float) -> NoisyValue:
    """A mean with two significant digits of its interval's width: 31.4 in [24.9, 38.2], not
    31.4172… in [24.91…, 38.17…]. The interval's ends round outwards, so it still covers
    whatever its unrounded ends covered; the value rounds to nearest and stays inside."""
    width = high - low
    digits = MEAN_DIGITS_MAX if width <= 0 else 1 - math.floor(math.log10(width))
    digits = min(max(digits, 0), MEAN_DIGITS_MAX)
    unit = 10**digits
    rounded_low = math.floor(low * unit) / unit
    rounded_high = math.ceil(high * unit) / unit
    rounded = min(max(round(value, digits), rounded_low), rounded_high)
    return NoisyValue(cell, float(rounded), (rounded_low, rounded_high))
