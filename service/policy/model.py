"""The validated, immutable form of dataset and partner policies.

Everything downstream (queries, sensitivity, the ledger) reads policies through these
types only; the YAML files and their marshmallow schemas stay inside ``service.policy``.
Budget amounts are exact ``Fraction``s so that budget sums never suffer float error.

The words of that schema are defined here once for every layer: what a month is, the
statistics, the budget unit of each privacy definition and the reserved upload columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, get_args

Definition = Literal["pure", "zcdp"]
DEFINITIONS: tuple[Definition, ...] = get_args(Definition)
"""Every privacy definition a dataset may declare."""
BudgetUnit = Literal["epsilon", "rho"]
BUDGET_UNITS: Mapping[Definition, BudgetUnit] = MappingProxyType({"pure": "epsilon", "zcdp": "rho"})
"""The quantity that budgets, costs and charges are counted in under each privacy definition."""
Statistic = Literal["count", "sum", "mean"]
STATISTICS: tuple[Statistic, ...] = get_args(Statistic)
"""Every statistic a query may ask for, in the order messages and documents list them."""

CONTACTS_COLUMN = "contacts"
"""The count of contacts in a stored cell, and the column that carries it in an upload."""
PERSON_COLUMN = "person"
"""The optional upload column of pseudonyms by which ingest bounds each person's contacts."""

MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
"""A calendar month as ``YYYY-MM``, months 01 to 12: the form of every month dpx reads."""


def is_month(value: object) -> bool:
    """Whether ``value`` is a string naming one calendar month as ``YYYY-MM``, nothing more.

    Policies, queries and uploads all ask this one question, so that a month one of them
    accepts (``2024-13``, ``2024-00``, ``2024-01`` with a trailing newline) is never a month
    another refuses.
    """
    return isinstance(value, str) and MONTH.fullmatch(value) is not None


@dataclass(frozen=True)
class Dimension:
    """A dimension with its public domain, in declared order (months enumerated YYYY-MM)."""

    name: str
    kind: Literal["month", "categorical"]
    values: tuple[str, ...]


@dataclass(frozen=True)
class Measure:
    """A per-contact measure with integer clamping bounds (lower <= upper)."""

    name: str
    lower: int
    upper: int

    @property
    def magnitude(self) -> int:
        """The largest absolute value one clamped contact can add to a sum."""
        return max(abs(self.lower), abs(self.upper))


@dataclass(frozen=True)
class SynopsisPolicy:
    """The marginals a synopsis measures (each in policy order) and what one build costs."""

    marginals: tuple[tuple[str, ...], ...]
    budget: Fraction


@dataclass(frozen=True)
class DatasetPolicy:
    """One dataset: its schema (public domains), privacy unit, bounds and global budget."""

    id: str
    title: str
    owner: str
    definition: Definition
    unit: str
    max_contacts_per_person: int
    max_contacts_per_cell: int | None
    delta: Fraction | None
    global_budget: Fraction
    share_releases: bool
    dimensions: tuple[Dimension, ...]
    measures: tuple[Measure, ...]
    source: str
    synopsis: SynopsisPolicy | None = None

    @property
    def budget_unit(self) -> BudgetUnit:
        """The name of the quantity budgets and costs of this dataset are counted in."""
        return BUDGET_UNITS[self.definition]

    def dimension(self, name: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.name == name:
                return dimension
        raise KeyError(name)

    def measure(self, name: str) -> Measure:
        for measure in self.measures:
            if measure.name == name:
                return measure
        raise KeyError(name)


@dataclass(frozen=True)
class Grant:
    """What one partner may ask of one dataset, and how much privacy loss it may spend."""

    dataset: str
    budget: Fraction
    max_per_query: Fraction | None
    statistics: frozenset[str]
    dimensions: frozenset[str]
    expires: date | None


@dataclass(frozen=True)
class PartnerPolicy:
    id: str
    name: str
    jurisdiction: str
    grants: tuple[Grant, ...]
    source: str

    def grant_for(self, dataset_id: str) -> Grant | None:
        for grant in self.grants:
            if grant.dataset == dataset_id:
                return grant
        return None


@dataclass(frozen=True)
class PolicySet:
    """A complete, validated set of policies; ``version`` identifies its exact file contents."""

    datasets: Mapping[str, DatasetPolicy]
    partners: Mapping[str, PartnerPolicy]
    version: str
