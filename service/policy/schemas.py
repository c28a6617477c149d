"""Marshmallow schemas for dataset and partner policy files (the YAML format of DESIGN.md).

A schema turns one parsed YAML document into checked domain values: exact ``Fraction``
amounts, enumerated month domains, ``DatasetPolicy`` and ``Grant`` objects. Every key at every
level is checked, because a misspelt key that was silently ignored could leave a budget or a
bound unenforced. Rules that need another file (does the granted dataset exist, and is it
counted in epsilon or rho?) are checked by ``service.policy.loader``.

Error messages are lowercase reasons without a final full stop; the loader prefixes them with
the file and the dotted field path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any, Literal

from marshmallow import RAISE, Schema, ValidationError, post_load, validates_schema

from service.policy.amounts import amount_text
from service.policy.fields import (
    MEASURE_BOUND,
    Amount,
    Choice,
    Day,
    Flag,
    Identifier,
    ListOf,
    Month,
    NamedEntries,
    PolicyId,
    Section,
    Text,
    WholeNumber,
)
from service.policy.model import (
    BUDGET_UNITS,
    DEFINITIONS,
    STATISTICS,
    DatasetPolicy,
    Definition,
    Dimension,
    Grant,
    Measure,
    PartnerPolicy,
    SynopsisPolicy,
)


class PolicySchema(Schema):
    """Base schema: unknown keys are errors, and the error names the keys that are allowed."""

    class Meta:
        unknown = RAISE

    error_messages = {"type": "must be a mapping"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        allowed = [field.data_key or name for name, field in self.load_fields.items()]
        self.error_messages = {
            **self.error_messages,
            "unknown": f"unknown field; expected one of: {', '.join(allowed)}",
        }


@dataclass(frozen=True)
class Budget:
    """An amount of privacy loss and the unit it is counted in (epsilon or rho)."""

    unit: Literal["epsilon", "rho"]
    amount: Fraction


class BudgetSchema(PolicySchema):
    """``{epsilon: x}`` (pure DP) or ``{rho: x}`` (zCDP): exactly one of the two."""

    epsilon = Amount()
    rho = Amount()

    @validates_schema
    def _one_unit(self, data: dict[str, Any], **kwargs: Any) -> None:
        if len(data) != 1:
            raise ValidationError(
                "must give one amount: epsilon (pure DP) or rho (zCDP)"
                + (", not both" if len(data) > 1 else "")
            )

    @post_load
    def _budget(self, data: dict[str, Any], **kwargs: Any) -> Budget:
        if "epsilon" in data:
            return Budget(unit="epsilon", amount=data["epsilon"])
        return Budget(unit="rho", amount=data["rho"])


class PrivacySchema(PolicySchema):
    """The privacy unit, its contribution bounds, and the dataset's global budget."""

    definition = Choice(DEFINITIONS, required=True)
    unit = Choice(("person",), required=True)
    max_contacts_per_person = WholeNumber(minimum=1, required=True)
    max_contacts_per_cell = WholeNumber(minimum=1)
    # delta never enters a zCDP charge; it only converts rho to the (epsilon, delta) reported
    # beside each release, so it has no nano-unit limit.
    delta = Amount(max_decimals=None, below_one=True)
    global_budget = Section(BudgetSchema, required=True)
    share_releases = Flag(load_default=False)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _consistent(self, data: dict[str, Any], original_data: Any, **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        # Present only when valid: a field that failed to load is left out of ``data``.
        definition: Definition | None = data.get("definition")
        if definition == "zcdp" and "delta" not in original_data:
            errors["delta"] = ["required for a zcdp dataset, to report epsilon beside rho"]
        if definition == "pure" and "delta" in original_data:
            errors["delta"] = ["not allowed for a pure dataset (pure DP has delta 0)"]
        budget = data.get("global_budget")
        if definition is not None and isinstance(budget, Budget):
            expected = BUDGET_UNITS[definition]
            if budget.unit != expected:
                errors["global_budget"] = [
                    f"a {definition} dataset counts its budget in {expected}, not {budget.unit}"
                ]
        per_person = data.get("max_contacts_per_person")
        per_cell = data.get("max_contacts_per_cell")
        if per_person is not None and per_cell is not None and per_cell > per_person:
            errors["max_contacts_per_cell"] = [
                f"must be at most max_contacts_per_person ({per_person}), not {per_cell}"
            ]
        if errors:
            raise ValidationError(errors)


def _months(start: str, end: str) -> tuple[str, ...]:
    """Every month from ``start`` to ``end`` inclusive, as ``YYYY-MM``."""
    year, month = int(start[:4]), int(start[5:])
    months = []
    while f"{year:04d}-{month:02d}" <= end:
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return tuple(months)


class DimensionSchema(PolicySchema):
    """``{type: month, from: YYYY-MM, to: YYYY-MM}`` or ``{values: [...]}``."""

    type = Choice(("month",))
    from_ = Month(data_key="from")
    to = Month()
    values = ListOf(Text(), noun="value", non_empty=True)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _one_form(self, data: dict[str, Any], original_data: Any, **kwargs: Any) -> None:
        month_keys = [key for key in ("type", "from", "to") if key in original_data]
        if "values" in original_data and month_keys:
            raise ValidationError(
                f"give either values or type: month with from and to, not values and "
                f"{', '.join(month_keys)}"
            )
        if "values" in original_data:
            return
        if not month_keys:
            raise ValidationError("must give values, or type: month with from and to")
        errors: dict[str, list[str]] = {}
        for key in ("type", "from", "to"):
            if key not in original_data:
                errors[key] = ["required for a month dimension"]
        if errors:
            raise ValidationError(errors)
        start, end = data.get("from_"), data.get("to")
        if start is not None and end is not None and start > end:
            raise ValidationError(f"from {start} is after to {end}")

    @post_load
    def _domain(self, data: dict[str, Any], **kwargs: Any) -> tuple[str, tuple[str, ...]]:
        if "values" in data:
            return "categorical", tuple(data["values"])
        return "month", _months(data["from_"], data["to"])


class MeasureSchema(PolicySchema):
    """``{min: int, max: int}``: the clamping bounds of one contact's value."""

    min = WholeNumber(minimum=-MEASURE_BOUND, maximum=MEASURE_BOUND, required=True)
    max = WholeNumber(minimum=-MEASURE_BOUND, maximum=MEASURE_BOUND, required=True)

    @validates_schema
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["min"] > data["max"]:
            raise ValidationError(f"min {data['min']} is greater than max {data['max']}")

    @post_load
    def _bounds(self, data: dict[str, Any], **kwargs: Any) -> tuple[int, int]:
        return data["min"], data["max"]


# The synopsis table spans the product of the domains its marginals use. Measured on the
# 2-core development machine: the dense non-negative least-squares fit takes 0.06 s at 288
# cells, 1.6 s at 2,880 (every dimension of the demo UK dataset) and 27 s at 17,280.
MAX_SYNOPSIS_CELLS = 5_000


class SynopsisSchema(PolicySchema):
    """``{marginals: [[dimension, ...], ...], budget: {epsilon|rho: x}}``; the dimensions and
    the unit are checked against the rest of the dataset file by ``DatasetSchema``."""

    marginals = ListOf(
        ListOf(Identifier(), noun="dimension", non_empty=True),
        noun="marginal",
        non_empty=True,
        required=True,
    )
    budget = Section(BudgetSchema, required=True)


class SourcedSchema(PolicySchema):
    """A top-level schema that knows its file, whose stem the document's id must equal."""

    def __init__(self, *, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source

    @validates_schema(skip_on_field_errors=False)
    def _id_is_file_stem(self, data: dict[str, Any], **kwargs: Any) -> None:
        stem = PurePosixPath(self.source).stem
        if "id" in data and data["id"] != stem:
            raise ValidationError(
                f"must equal the file name '{stem}', not '{data['id']}'", field_name="id"
            )


class DatasetSchema(SourcedSchema):
    """A dataset policy file; loads into a ``DatasetPolicy``."""

    id = PolicyId(required=True)
    title = Text(required=True)
    owner = Text(required=True)
    privacy = Section(PrivacySchema, required=True)
    dimensions = NamedEntries(DimensionSchema, noun="dimension", required=True)
    measures = NamedEntries(MeasureSchema, noun="measure", load_default=dict)
    synopsis = Section(SynopsisSchema)

    @validates_schema(skip_on_field_errors=False)
    def _synopsis_fits(self, data: dict[str, Any], **kwargs: Any) -> None:
        synopsis, dimensions = data.get("synopsis"), data.get("dimensions")
        if not isinstance(synopsis, Mapping) or not isinstance(dimensions, Mapping):
            return
        if "marginals" not in synopsis or "budget" not in synopsis:
            return  # the missing field is reported by the synopsis schema itself
        errors: dict[str, Any] = {}
        marginal_errors: dict[int, list[str]] = {}
        seen: dict[frozenset[str], int] = {}
        for index, marginal in enumerate(synopsis["marginals"]):
            unknown = [name for name in marginal if name not in dimensions]
            if unknown:
                marginal_errors[index] = [
                    f"'{name}' is not a dimension of this dataset ({', '.join(dimensions)})"
                    for name in unknown
                ]
            elif frozenset(marginal) in seen:
                marginal_errors[index] = [
                    f"repeats marginals.{seen[frozenset(marginal)]} (order does not matter)"
                ]
            else:
                seen[frozenset(marginal)] = index
        if marginal_errors:
            errors["marginals"] = marginal_errors
        else:
            used = {name for marginal in synopsis["marginals"] for name in marginal}
            cells = math.prod(len(dimensions[name][1]) for name in used)
            if cells > MAX_SYNOPSIS_CELLS:
                errors["marginals"] = [
                    f"the dimensions the marginals use span {cells} cells; at most "
                    f"{MAX_SYNOPSIS_CELLS} are allowed"
                ]
        privacy, budget = data.get("privacy"), synopsis["budget"]
        if isinstance(privacy, Mapping) and isinstance(budget, Budget):
            units: Mapping[Any, str] = BUDGET_UNITS
            expected = units.get(privacy.get("definition"))
            cap = privacy.get("global_budget")
            if expected is not None and budget.unit != expected:
                errors["budget"] = [
                    f"a {privacy['definition']} dataset counts its budget in {expected}, "
                    f"not {budget.unit}"
                ]
            elif isinstance(cap, Budget) and budget.amount > cap.amount:
                errors["budget"] = [
                    f"{budget.unit} {amount_text(budget.amount)} is more than the dataset's "
                    f"global budget of {amount_text(cap.amount)}"
                ]
        if errors:
            raise ValidationError({"synopsis": errors})

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _names(self, data: dict[str, Any], original_data: Any, **kwargs: Any) -> None:
        dimensions = original_data.get("dimensions")
        measures = original_data.get("measures")
        if isinstance(dimensions, Mapping) and not dimensions:
            raise ValidationError("must declare at least one dimension", field_name="dimensions")
        if isinstance(dimensions, Mapping) and isinstance(measures, Mapping):
            clashes = [name for name in measures if name in dimensions]
            if clashes:
                raise ValidationError(
                    {"measures": {name: [f"'{name}' is already a dimension"] for name in clashes}}
                )

    @post_load
    def _dataset(self, data: dict[str, Any], **kwargs: Any) -> DatasetPolicy:
        privacy = data["privacy"]
        return DatasetPolicy(
            id=data["id"],
            title=data["title"],
            owner=data["owner"],
            definition=privacy["definition"],
            unit=privacy["unit"],
            max_contacts_per_person=privacy["max_contacts_per_person"],
            max_contacts_per_cell=privacy.get("max_contacts_per_cell"),
            delta=privacy.get("delta"),
            global_budget=privacy["global_budget"].amount,
            share_releases=privacy["share_releases"],
            dimensions=tuple(
                Dimension(name=name, kind=kind, values=values)
                for name, (kind, values) in data["dimensions"].items()
            ),
            measures=tuple(
                Measure(name=name, lower=lower, upper=upper)
                for name, (lower, upper) in data["measures"].items()
            ),
            source=self.source,
            synopsis=_synopsis(data.get("synopsis"), list(data["dimensions"])),
        )


def _synopsis(synopsis: Mapping[str, Any] | None, order: list[str]) -> SynopsisPolicy | None:
    # Each marginal in policy order: a marginal is a set of dimensions, and its cells follow
    # the same order as a query grouped by them.
    if synopsis is None:
        return None
    return SynopsisPolicy(
        marginals=tuple(
            tuple(sorted(marginal, key=order.index)) for marginal in synopsis["marginals"]
        ),
        budget=synopsis["budget"].amount,
    )


@dataclass(frozen=True)
class GrantEntry:
    """A grant as written, with the unit its budget is counted in (checked by the loader)."""

    grant: Grant
    unit: Literal["epsilon", "rho"]


class GrantSchema(PolicySchema):
    """One grant of a partner file."""

    dataset = PolicyId(required=True)
    budget = Section(BudgetSchema, required=True)
    max_per_query = Section(BudgetSchema)
    statistics = ListOf(Choice(STATISTICS), noun="statistic", non_empty=True, required=True)
    dimensions = ListOf(Identifier(), noun="dimension", required=True)
    expires = Day()

    @validates_schema(skip_on_field_errors=False)
    def _per_query_within_budget(self, data: dict[str, Any], **kwargs: Any) -> None:
        budget, per_query = data.get("budget"), data.get("max_per_query")
        if not isinstance(budget, Budget) or not isinstance(per_query, Budget):
            return
        if per_query.unit != budget.unit:
            raise ValidationError(
                f"is counted in {per_query.unit} but the budget is counted in {budget.unit}",
                field_name="max_per_query",
            )
        if per_query.amount > budget.amount:
            raise ValidationError(
                f"{per_query.unit} {amount_text(per_query.amount)} is more than the grant's "
                f"budget of {amount_text(budget.amount)}",
                field_name="max_per_query",
            )

    @post_load
    def _grant(self, data: dict[str, Any], **kwargs: Any) -> GrantEntry:
        per_query = data.get("max_per_query")
        grant = Grant(
            dataset=data["dataset"],
            budget=data["budget"].amount,
            max_per_query=per_query.amount if per_query is not None else None,
            statistics=frozenset(data["statistics"]),
            dimensions=frozenset(data["dimensions"]),
            expires=data.get("expires"),
        )
        return GrantEntry(grant=grant, unit=data["budget"].unit)


@dataclass(frozen=True)
class PartnerFile:
    """A loaded partner file: the policy, and the unit of each of its grants, in order."""

    policy: PartnerPolicy
    units: tuple[Literal["epsilon", "rho"], ...]


class PartnerSchema(SourcedSchema):
    """A partner policy file; loads into a ``PartnerFile``."""

    id = PolicyId(required=True)
    name = Text(required=True)
    jurisdiction = Text(required=True)
    grants = ListOf(Section(GrantSchema), noun="grant", unique=False, required=True)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _one_grant_per_dataset(
        self, data: dict[str, Any], original_data: Any, **kwargs: Any
    ) -> None:
        grants = original_data.get("grants")
        if not isinstance(grants, list):
            return
        first: dict[str, int] = {}
        errors: dict[int, Any] = {}
        for index, grant in enumerate(grants):
            dataset = grant.get("dataset") if isinstance(grant, Mapping) else None
            if not isinstance(dataset, str):
                continue
            if dataset in first:
                errors[index] = {
                    "dataset": [
                        f"a second grant for {dataset}; grants.{first[dataset]} already "
                        "grants it (one grant per dataset)"
                    ]
                }
            else:
                first[dataset] = index
        if errors:
            raise ValidationError({"grants": errors})

    @post_load
    def _partner(self, data: dict[str, Any], **kwargs: Any) -> PartnerFile:
        entries: list[GrantEntry] = data["grants"]
        policy = PartnerPolicy(
            id=data["id"],
            name=data["name"],
            jurisdiction=data["jurisdiction"],
            grants=tuple(entry.grant for entry in entries),
            source=self.source,
        )
        return PartnerFile(policy=policy, units=tuple(entry.unit for entry in entries))
