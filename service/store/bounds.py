"""The bounds each batch was stored under and the definition each charge was made in, and
the policy changes they rule out.

Sensitivity is derived from the dataset policy in force when a query runs. If a policy lowers
``max_contacts_per_person`` or ``max_contacts_per_cell``, narrows a measure's bounds or drops
dimension values after data was stored under the wider ones, every later query would add
noise calibrated to bounds the stored data does not obey. So each batch records the bounds
it was truncated and clamped to (public policy values, never data), and a policy set that
shrinks any of them below what a stored batch recorded is refused: by ``dpx check-policies``,
at start and at reload. Raising a bound or widening a domain stays allowed.

The check reads the database, not the policies a process holds, so it sees the batches
every worker and instance stored. A worker may still hold the previous set while another
process puts a narrower one in force (gunicorn's old workers finish their requests after a
reload), so the database also records the bounds in force per dataset (``dataset_bounds``):
a start or reload checks the stored batches and replaces that record in one transaction
holding the audit head (``put_in_force``), and an upload, holding the same head, stores
only if the bounds it was truncated under are still the ones in force (``check_in_force``).
Whichever commits first, the other sees it: a batch that commits first makes the narrower
set fail its check, and a set that commits first makes the upload fail with
``BoundsChanged`` (nothing stored; sending it again truncates under the new bounds).

Queries are the mirror image: a worker still holding the previous set would add noise
calibrated to its bounds to cells stored under wider ones in force since. A query checks
the bounds in force when it is charged (``check_in_force``, under the same head: a refused
query is not charged) and again once it has read the cells (``still_in_force``).

The privacy definition is recorded and checked with the bounds, for the same reason from the
ledger's side: budgets hold bare amounts, so once a dataset's budgets were charged in rho
(zCDP) a set that relabels the dataset pure (epsilon) would read the rho spent as epsilon,
although Gaussian noise has no finite pure epsilon (and epsilon read as rho undercounts too,
since pure DP at epsilon is only epsilon**2 / 2-zCDP). A set that changes the definition of a
dataset with charges is refused like one that shrinks a bound; a worker still holding the
previous definition is refused its charge by ``check_in_force``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select

from service.database.engine import Database
from service.database.schema import batches, charges, dataset_bounds
from service.policy.errors import PolicyError
from service.policy.model import BUDGET_UNITS, DatasetPolicy, PolicySet
from service.store.errors import BoundsChanged


def recorded_bounds(dataset: DatasetPolicy) -> str:
    """The bounds of ``dataset`` as a batch records them, with its privacy definition
    (canonical JSON)."""
    return json.dumps(
        {
            "definition": dataset.definition,
            "max_contacts_per_person": dataset.max_contacts_per_person,
            "max_contacts_per_cell": dataset.max_contacts_per_cell,
            "measures": {m.name: [m.lower, m.upper] for m in dataset.measures},
            "dimensions": {d.name: list(d.values) for d in dataset.dimensions},
        },
        sort_keys=True,
        separators=(",", ":"),
    )


@dataclass
class StoredBounds:
    """The widest bounds any stored batch of one dataset was stored under."""

    max_contacts_per_person: int
    # None once any batch was stored without a per-cell bound (only the person bound held).
    max_contacts_per_cell: int | None
    measures: dict[str, tuple[int, int]]
    dimensions: dict[str, set[str]]

    def widen(self, recorded: Mapping[str, Any]) -> None:
        self.max_contacts_per_person = max(
            self.max_contacts_per_person, int(recorded["max_contacts_per_person"])
        )
        cell = recorded["max_contacts_per_cell"]
        if self.max_contacts_per_cell is not None:
            self.max_contacts_per_cell = (
                None if cell is None else max(self.max_contacts_per_cell, cell)
            )
        for name, (lower, upper) in recorded["measures"].items():
            low, high = self.measures.get(name, (lower, upper))
            self.measures[name] = (min(low, lower), max(high, upper))
        for name, values in recorded["dimensions"].items():
            self.dimensions.setdefault(name, set()).update(values)


def _stored_bounds(conn: Connection) -> dict[str, StoredBounds]:
    """The widest recorded bounds per dataset with stored batches (batches stored before
    bounds were recorded do not count)."""
    rows = conn.execute(
        select(batches.c.dataset, batches.c.bounds).where(batches.c.bounds.is_not(None)).distinct()
    ).all()
    widest: dict[str, StoredBounds] = {}
    for row in rows:
        recorded = json.loads(row.bounds)
        if row.dataset not in widest:
            widest[row.dataset] = StoredBounds(
                max_contacts_per_person=int(recorded["max_contacts_per_person"]),
                max_contacts_per_cell=recorded["max_contacts_per_cell"],
                measures={},
                dimensions={},
            )
        widest[row.dataset].widen(recorded)
    return widest


def shrunk_bounds(policies: PolicySet, stored: Mapping[str, StoredBounds]) -> list[PolicyError]:
    """Every bound of ``policies`` that is narrower than what stored data was stored under,
    as ``file:field: reason``."""
    errors: list[PolicyError] = []
    for dataset in policies.datasets.values():
        if dataset.id in stored:
            errors.extend(_shrunk(dataset, stored[dataset.id]))
    return errors


def _shrunk(dataset: DatasetPolicy, stored: StoredBounds) -> Iterator[PolicyError]:
    source = dataset.source
    held = "stored batches of this dataset were bounded by"
    if dataset.max_contacts_per_person < stored.max_contacts_per_person:
        yield PolicyError(
            source,
            "privacy.max_contacts_per_person",
            f"must stay at least {stored.max_contacts_per_person}: {held} "
            f"{stored.max_contacts_per_person}, not {dataset.max_contacts_per_person}",
        )
    cell = dataset.max_contacts_per_cell
    if cell is not None and (
        stored.max_contacts_per_cell is None or cell < stored.max_contacts_per_cell
    ):
        was = (
            "no per-cell bound"
            if stored.max_contacts_per_cell is None
            else str(stored.max_contacts_per_cell)
        )
        yield PolicyError(
            source,
            "privacy.max_contacts_per_cell",
            f"cannot be lowered to {cell}: {held} {was}",
        )
    measures = {measure.name: measure for measure in dataset.measures}
    for name, (lower, upper) in sorted(stored.measures.items()):
        measure = measures.get(name)
        if measure is None:
            yield PolicyError(
                source, f"measures.{name}", f"cannot be dropped: {held} bounds {lower}..{upper}"
            )
            continue
        if measure.lower > lower:
            yield PolicyError(
                source,
                f"measures.{name}.min",
                f"must stay at most {lower}: {held} {lower}..{upper}, not {measure.lower}",
            )
        if measure.upper < upper:
            yield PolicyError(
                source,
                f"measures.{name}.max",
                f"must stay at least {upper}: {held} {lower}..{upper}, not {measure.upper}",
            )
    dimensions = {dimension.name: dimension for dimension in dataset.dimensions}
    for name, values in sorted(stored.dimensions.items()):
        dimension = dimensions.get(name)
        if dimension is None:
            yield PolicyError(
                source, f"dimensions.{name}", "cannot be dropped: stored batches hold it"
            )
            continue
        dropped = sorted(values - set(dimension.values))
        if dropped:
            field = (
                f"dimensions.{name}" if dimension.kind == "month" else f"dimensions.{name}.values"
            )
            yield PolicyError(
                source,
                field,
                f"cannot drop {', '.join(dropped)}: stored batches were stored with "
                f"{'them' if len(dropped) > 1 else 'it'} in the domain",
            )


def changed_definitions(conn: Connection, policies: PolicySet) -> list[PolicyError]:
    """Every dataset of ``policies`` whose budgets were charged under another privacy
    definition than the one it now declares, as ``file:field: reason``."""
    in_force = {
        row.dataset: json.loads(row.bounds).get("definition")
        for row in conn.execute(select(dataset_bounds.c.dataset, dataset_bounds.c.bounds))
    }
    errors: list[PolicyError] = []
    for dataset in policies.datasets.values():
        if in_force.get(dataset.id) == dataset.definition:
            # Every charge since this record was made checked it (``check_in_force``), and
            # the record was only made once the charges before it agreed.
            continue
        charged = conn.execute(
            select(charges.c.definition)
            .where(charges.c.dataset == dataset.id, charges.c.definition != dataset.definition)
            .limit(1)
        ).scalar_one_or_none()
        if charged is not None:
            errors.append(
                PolicyError(
                    dataset.source,
                    "privacy.definition",
                    f"cannot change from {charged} to {dataset.definition}: budgets of this "
                    f"dataset were charged in {BUDGET_UNITS[charged]}, and the ledger "
                    "cannot convert what was spent",
                )
            )
    return errors


def _defects(conn: Connection, policies: PolicySet) -> list[PolicyError]:
    return shrunk_bounds(policies, _stored_bounds(conn)) + changed_definitions(conn, policies)


def stored_data_defects(database: Database, policies: PolicySet) -> list[PolicyError]:
    """The defects of ``policies`` against the batches and charges ``database`` holds."""
    with database.read() as conn:
        return _defects(conn, policies)


def put_in_force(conn: Connection, policies: PolicySet) -> list[PolicyError]:
    """Check ``policies`` against the stored batches and charges and, if no bound shrinks
    and no definition changes, record their bounds as the ones in force; return the
    defects (and record nothing) otherwise.

    The caller holds the audit head in ``conn``'s transaction, so no upload or charge
    commits between the check and the record.
    """
    defects = _defects(conn, policies)
    if defects:
        return defects
    in_force = dict(conn.execute(select(dataset_bounds.c.dataset, dataset_bounds.c.bounds)).all())
    for dataset in policies.datasets.values():
        bounds = recorded_bounds(dataset)
        if in_force.get(dataset.id) != bounds:
            conn.execute(delete(dataset_bounds).where(dataset_bounds.c.dataset == dataset.id))
            _record(conn, dataset.id, bounds)
    return []


# Read in every charging transaction: built once.
_IN_FORCE = select(dataset_bounds.c.bounds).where(dataset_bounds.c.dataset == bindparam("dataset"))


def check_in_force(conn: Connection, dataset: str, bounds: str) -> None:
    """Raise ``BoundsChanged`` unless ``bounds`` are those in force for ``dataset``; with no
    record yet (a database older than the record), ``bounds`` become the ones in force.

    The caller holds the audit head in ``conn``'s transaction, so no start or reload puts
    other bounds in force before it commits.
    """
    in_force = conn.execute(_IN_FORCE, {"dataset": dataset}).scalar_one_or_none()
    if in_force is None:
        _record(conn, dataset, bounds)
    elif in_force != bounds:
        raise BoundsChanged(dataset)


def _record(conn: Connection, dataset: str, bounds: str) -> None:
    conn.execute(
        dataset_bounds.insert().values(dataset=dataset, bounds=bounds, updated_at=datetime.now(UTC))
    )


def still_in_force(database: Database, dataset: DatasetPolicy) -> bool:
    """True when the bounds of ``dataset`` are those in force (or none are recorded).

    Read after a query read the cells: bounds change before any batch is stored under them,
    so if ``dataset``'s are still in force now, every cell read was stored under them.
    """
    with database.read() as conn:
        in_force = conn.execute(_IN_FORCE, {"dataset": dataset.id}).scalar_one_or_none()
    return in_force is None or in_force == recorded_bounds(dataset)
