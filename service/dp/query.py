"""The validated query model: what a partner asks, checked against the dataset's public schema.

A :class:`Query` is normalised so that one question has one form: group-by dimensions and
filter values follow the policy's declared order, a month range becomes its explicit months,
and a filter that keeps the whole domain is dropped. :func:`query_key` hashes that form, so
a reworded repeat of a question finds the stored release instead of buying fresh noise (an
averaging attack would otherwise only need to reorder a list).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from service.dp.accounting import parse_cost
from service.dp.errors import InvalidQuery
from service.policy.amounts import amount_text
from service.policy.model import (
    STATISTICS,
    BudgetUnit,
    DatasetPolicy,
    Dimension,
    Statistic,
    is_month,
)

MAX_GROUP_BY = 3
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class AccuracyTarget:
    """Each released value within ``max_error`` of the truth with probability >= 1 - alpha."""

    max_error: float
    alpha: float


@dataclass(frozen=True)
class Query:
    """One validated, normalised question about one dataset.

    Exactly one of ``cost`` (epsilon or rho, per the dataset's definition) and ``accuracy``
    is set. ``filters`` holds ``(dimension, values)`` pairs sorted by dimension name, values
    in domain order.
    """

    dataset: str
    statistic: Statistic
    measure: str | None
    group_by: tuple[str, ...]
    filters: tuple[tuple[str, tuple[str, ...]], ...]
    cost: Fraction | None
    accuracy: AccuracyTarget | None
    alpha: float = DEFAULT_ALPHA
    budget_unit: BudgetUnit = "epsilon"

    def filter_values(self, dimension: str) -> tuple[str, ...] | None:
        """The values a filter keeps for ``dimension``, or None when it is not filtered."""
        for name, values in self.filters:
            if name == dimension:
                return values
        return None


def build_query(
    raw: Mapping[str, Any], dataset: DatasetPolicy, *, max_cells: int = 10_000
) -> Query:
    """Validate a type-checked request body against ``dataset`` and return its normal form.

    Raises :class:`InvalidQuery` with the offending field and what would be right.
    """
    dataset_id = raw.get("dataset", dataset.id)
    if dataset_id != dataset.id:
        raise InvalidQuery("dataset", f"{dataset_id!r} does not match {dataset.id!r}")
    statistic = _statistic(raw.get("statistic"))
    measure = _measure(raw.get("measure"), statistic, dataset)
    group_by = _group_by(raw.get("group_by") or [], dataset)
    filters = _filters(raw.get("filters") or {}, dataset)
    cost, accuracy, alpha = _privacy(raw, dataset)
    query = Query(
        dataset=dataset.id,
        statistic=statistic,
        measure=measure,
        group_by=group_by,
        filters=filters,
        cost=cost,
        accuracy=accuracy,
        alpha=alpha,
        budget_unit=dataset.budget_unit,
    )
    sizes = [len(_cell_values(query, dataset.dimension(name))) for name in group_by]
    if math.prod(sizes) > max_cells:
        product = " x ".join(str(size) for size in sizes)
        raise InvalidQuery(
            "group_by",
            f"{product} = {math.prod(sizes)} cells exceeds the limit of {max_cells}",
        )
    return query


def canonical(query: Query) -> dict[str, Any]:
    """The JSON-able canonical form: the same question always gives the same dict.

    Costs are exact decimal strings; every list is in policy order.
    """
    privacy: dict[str, Any]
    if query.cost is not None:
        privacy = {query.budget_unit: amount_text(query.cost)}
    elif query.accuracy is not None:
        privacy = {"accuracy": {"max_error": query.accuracy.max_error}}
    else:
        raise ValueError("a query needs a cost or an accuracy target")
    return {
        "dataset": query.dataset,
        "statistic": query.statistic,
        "measure": query.measure,
        "group_by": list(query.group_by),
        "filters": {name: list(values) for name, values in query.filters},
        "privacy": privacy,
        "alpha": query.alpha,
    }


def query_key(query: Query) -> str:
    """The key that finds the stored release of ``query``: :func:`content_key` of its
    canonical form."""
    return content_key(canonical(query))


def content_key(obj: object) -> str:
    """The sha256 hex digest that names ``obj`` in storage: of its JSON with sorted keys,
    separators ``,`` and ``:``, and non-ASCII escaped as ``\\uXXXX``.

    Unlike the signed form (``canonical_json``, non-ASCII as UTF-8), the escapes stay:
    stored releases are found by these keys, and a key that changed would answer a repeated
    question with fresh noise and a second charge.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def hash_request(raw: Mapping[str, Any]) -> str:
    """The sha256 hex digest of a query request's body as sent, before validation: what an
    Idempotency-Key is bound to. Both the charged and the synopsis path compute it here, so
    one key means one request whichever path answers it.

    Unlike :func:`query_key`, a reworded body hashes differently: a retry must repeat its
    request, not merely its question. The bytes must never change, or a retry after an
    upgrade would be refused as another request.
    """
    return hashlib.sha256(json.dumps(dict(raw), sort_keys=True, default=str).encode()).hexdigest()


def group_cells(query: Query, dataset: DatasetPolicy) -> list[tuple[str, ...]]:
    """Every output cell: the full cross product of the group-by domains, in domain order.

    A grouped dimension that is also filtered ranges over the filter's values (public, chosen
    by the partner). Never data-dependent: empty cells are released too, so the set of keys
    reveals nothing. One empty tuple when there is no group-by.
    """
    domains = [_cell_values(query, dataset.dimension(name)) for name in query.group_by]
    return list(itertools.product(*domains))


def merged_cells(query: Query, dataset: DatasetPolicy) -> int:
    """How many stored-cell combinations at most fall into one output cell of the query.

    A per-cell contribution bound holds for stored cells (one value of every dimension); an
    output cell that merges several of them can hold that many times more of one person.
    """
    sizes = [
        len(_cell_values(query, dimension))
        for dimension in dataset.dimensions
        if dimension.name not in query.group_by
    ]
    return math.prod(sizes)


def _cell_values(query: Query, dimension: Dimension) -> tuple[str, ...]:
    kept = query.filter_values(dimension.name)
    return dimension.values if kept is None else kept


def _statistic(value: object) -> Statistic:
    if value not in STATISTICS:
        raise InvalidQuery("statistic", f"{value!r} is not one of {', '.join(STATISTICS)}")
    return value


def _measure(value: object, statistic: Statistic, dataset: DatasetPolicy) -> str | None:
    if statistic == "count":
        if value is not None:
            raise InvalidQuery("measure", "not allowed for count; remove it")
        return None
    if value is None:
        raise InvalidQuery("measure", f"required for {statistic}")
    names = [measure.name for measure in dataset.measures]
    if value not in names:
        known = ", ".join(names) if names else "none"
        raise InvalidQuery(
            "measure", f"{value!r} is not a measure of {dataset.id} (measures: {known})"
        )
    return value


def _dimension_names(dataset: DatasetPolicy) -> str:
    return ", ".join(dimension.name for dimension in dataset.dimensions)


def _group_by(value: object, dataset: DatasetPolicy) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise InvalidQuery("group_by", "must be a list of dimension names")
    if len(value) > MAX_GROUP_BY:
        raise InvalidQuery("group_by", f"at most {MAX_GROUP_BY} dimensions, got {len(value)}")
    seen: set[str] = set()
    order = {dimension.name: index for index, dimension in enumerate(dataset.dimensions)}
    for name in value:
        if name not in order:
            raise InvalidQuery(
                "group_by",
                f"{name!r} is not a dimension of {dataset.id} ({_dimension_names(dataset)})",
            )
        if name in seen:
            raise InvalidQuery("group_by", f"{name!r} is repeated")
        seen.add(name)
    # Policy order, not request order: a reordered group-by is the same question.
    return tuple(sorted(seen, key=order.__getitem__))


def _filters(value: object, dataset: DatasetPolicy) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, Mapping):
        raise InvalidQuery("filters", "must be an object mapping dimensions to values")
    names = {dimension.name for dimension in dataset.dimensions}
    result: list[tuple[str, tuple[str, ...]]] = []
    for name, spec in value.items():
        if name not in names:
            raise InvalidQuery(
                "filters",
                f"{name!r} is not a dimension of {dataset.id} ({_dimension_names(dataset)})",
            )
        dimension = dataset.dimension(name)
        kept = _filter_values(dimension, spec)
        # A filter that keeps the whole domain asks the same question as no filter.
        if len(kept) < len(dimension.values):
            result.append((name, kept))
    return tuple(sorted(result))


def _domain_text(dimension: Dimension) -> str:
    if dimension.kind == "month":
        return f"in {dimension.values[0]}..{dimension.values[-1]}"
    return f"one of {', '.join(dimension.values)}"


def _filter_values(dimension: Dimension, spec: object) -> tuple[str, ...]:
    field = f"filters.{dimension.name}"
    if isinstance(spec, Mapping):
        return _month_range(dimension, spec)
    if not isinstance(spec, Sequence) or isinstance(spec, str):
        raise InvalidQuery(field, "must be a list of values")
    if not spec:
        raise InvalidQuery(field, "empty list; give at least one value")
    for item in spec:
        if item not in dimension.values:
            raise InvalidQuery(field, f"{item!r} is not {_domain_text(dimension)}")
    wanted = set(spec)
    return tuple(item for item in dimension.values if item in wanted)


def _month_range(dimension: Dimension, spec: Mapping[str, Any]) -> tuple[str, ...]:
    field = f"filters.{dimension.name}"
    if dimension.kind != "month":
        raise InvalidQuery(field, "a from/to range is only allowed for month dimensions")
    if set(spec) != {"from", "to"}:
        raise InvalidQuery(field, "a range needs exactly the keys 'from' and 'to'")
    start, end = spec["from"], spec["to"]
    for bound in (start, end):
        if not is_month(bound) or bound not in dimension.values:
            raise InvalidQuery(field, f"{bound!r} is not {_domain_text(dimension)}")
    first, last = dimension.values.index(start), dimension.values.index(end)
    if first > last:
        raise InvalidQuery(field, f"range {start}..{end} is reversed")
    return dimension.values[first : last + 1]


def _privacy(
    raw: Mapping[str, Any], dataset: DatasetPolicy
) -> tuple[Fraction | None, AccuracyTarget | None, float]:
    unit = dataset.budget_unit
    other = "rho" if unit == "epsilon" else "epsilon"
    given = [key for key in ("epsilon", "rho", "accuracy") if raw.get(key) is not None]
    if len(given) != 1:
        found = f"got {' and '.join(given)}" if given else "got none"
        raise InvalidQuery(unit, f"give exactly one of {unit} or accuracy ({found})")
    if given[0] == other:
        raise InvalidQuery(
            other, f"{dataset.id} uses {dataset.definition} DP; give {unit}, not {other}"
        )
    alpha = _alpha(raw.get("alpha"), "alpha")
    if given[0] == unit:
        return parse_cost(raw[unit], field=unit), None, alpha
    spec = raw["accuracy"]
    if not isinstance(spec, Mapping):
        raise InvalidQuery("accuracy", "must be an object with max_error and optional alpha")
    max_error = spec.get("max_error")
    if (
        isinstance(max_error, bool)
        or not isinstance(max_error, int | float)
        or not math.isfinite(max_error)
        or max_error <= 0
    ):
        raise InvalidQuery("accuracy.max_error", f"must be a finite number > 0, got {max_error!r}")
    if spec.get("alpha") is not None:
        inner = _alpha(spec["alpha"], "accuracy.alpha")
        if raw.get("alpha") is not None and inner != alpha:
            raise InvalidQuery("alpha", f"{alpha} differs from accuracy.alpha {inner}")
        alpha = inner
    return None, AccuracyTarget(max_error=float(max_error), alpha=alpha), alpha


def _alpha(value: object, field: str) -> float:
    if value is None:
        return DEFAULT_ALPHA
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 0.5
    ):
        raise InvalidQuery(field, f"{value!r} is not in (0, 0.5]")
    return float(value)
