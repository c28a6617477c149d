"""Synopses as a governed service: build one per dataset, answer partners from it for free.

A build follows the order of a charged query (see ``service.exchange``):

1. price the declared marginals (``dp.synopsis.design``) without touching data;
2. charge the dataset's global budget exactly the synopsis budget, durably, with its ledger
   line and audit entry, in one transaction (refused whole when there is no room);
3. only then read the cells, draw OpenDP noise, fit the integer table, seal and store it
   with its audit entry in a second transaction.

A build killed between 2 and 3 loses its budget, never privacy: no synopsis row exists
until the whole table is stored. Answers are post-processing of the stored table, so
they cost nothing; they are still stored, signed releases, under the partner's grant.

The module is long because it is one service with two halves that must agree: the build
that stores a synopsis, and the free answers that read it, each of which still takes every
step of a charged query but the charge (grant check, audited refusal, replay of an earlier
release, signed and stored release).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import Any

from service import access
from service.auth.registry import Principal
from service.crypto.signing import sign_document
from service.dp.aggregate import true_aggregates
from service.dp.errors import InvalidQuery
from service.dp.query import Query, build_query, canonical, content_key, hash_request
from service.dp.release import AnsweredRelease, ReleaseDocument, UnsignedRelease
from service.dp.synopsis import (
    NotInSynopsis,
    SynopsisValue,
    design,
    estimate,
    measure,
)
from service.dp.synopsis import answer as answer_from
from service.exchange import Answer, Conflict, Exchange
from service.ledger.budgets import BudgetExhausted
from service.ledger.releases import ReleaseConflict, StoredRelease
from service.policy.amounts import amount_text
from service.policy.errors import PolicyViolation
from service.policy.grants import check_grant
from service.policy.model import DatasetPolicy, Grant, PartnerPolicy, PolicySet
from service.store.bounds import check_in_force, recorded_bounds, still_in_force
from service.store.errors import BoundsChanged
from service.store.synopses import StoredSynopsis, SynopsisStore

SYNOPSIS_ACCOUNT = "@synopsis"
"""The ledger account of a dataset's synopsis builds. Not a valid partner id, so it never
clashes with a partner; its limit is the global budget, which every build is charged to."""

SOURCE = "synopsis"

OnStep = Callable[[str, int, int], None]
"""Called with (what was just done, steps done, steps in all) as a build advances."""


class NoSynopsis(LookupError):
    """The dataset declares no synopsis, or none has been built yet."""


class SynopsisRefused(Exception):
    """The global budget has no room for a build; nothing was charged."""


@dataclass(frozen=True)
class Built:
    """A finished build, as `dpx synopsis build` reports it."""

    stored: StoredSynopsis
    shares: tuple[Fraction, ...]
    unit: str
    global_remaining: Fraction


class Synopses:
    """Builds, lists and answers from the synopses of the exchange's datasets."""

    def __init__(self, exchange: Exchange, store: SynopsisStore) -> None:
        self.exchange = exchange
        self.store = store

    # -- building -------------------------------------------------------------------------

    def build(self, dataset_id: str, *, actor: str, on_step: OnStep | None = None) -> Built:
        """Charge, measure, fit and store the dataset's synopsis; see the module docstring."""
        exchange = self.exchange
        # One snapshot of the live policies for the whole build, as for a query: the stored
        # synopsis names the version it was priced under, whatever a reload does meanwhile.
        policies = exchange.policies
        dataset = access.dataset(policies, dataset_id)
        if dataset.synopsis is None:
            raise NoSynopsis(f"dataset {dataset.id} declares no synopsis in its policy")
        began = time.monotonic()
        priced = design(dataset)
        steps = 4
        unit = dataset.budget_unit
        synopsis_id = "syn_" + secrets.token_hex(10)
        try:
            with exchange.database.write() as conn:
                remaining = exchange.ledger.charge(
                    conn,
                    dataset=dataset.id,
                    partner=SYNOPSIS_ACCOUNT,
                    unit=unit,
                    amount=priced.cost,
                    partner_budget=dataset.global_budget,
                    global_budget=dataset.global_budget,
                )
                exchange.ledger.record(
                    conn,
                    release_id=synopsis_id,
                    dataset=dataset.id,
                    partner=SYNOPSIS_ACCOUNT,
                    definition=dataset.definition,
                    amount=priced.cost,
                )
                exchange.audit.append(
                    conn,
                    actor=actor,
                    action="synopsis.charge",
                    dataset=dataset.id,
                    details={
                        "synopsis_id": synopsis_id,
                        unit: amount_text(priced.cost),
                        "marginals": [list(m) for m in priced.marginals],
                    },
                )
                # As for a query: the noise is calibrated to this set's bounds.
                check_in_force(conn, dataset.id, recorded_bounds(dataset))
        except BudgetExhausted as exhausted:
            raise SynopsisRefused(
                f"the synopsis of {dataset.id} costs {unit} {amount_text(priced.cost)} but the "
                f"global budget has {unit} {float(exhausted.remaining.dataset):g} left; "
                "nothing was charged"
            ) from None
        _step(on_step, f"charged {unit} {amount_text(priced.cost)}", 1, steps)
        # The charge is committed. Only now is any data read or any noise drawn. Batch ids
        # are read before the cells, so a batch arriving in between can only make the
        # synopsis look stale, never hide that it is.
        included = self.store.batch_ids(dataset.id)
        cells = exchange.store.cells(dataset)
        if not still_in_force(exchange.database, dataset):
            raise BoundsChanged(dataset.id)
        counts = [true_aggregates(cells, plan.query, dataset).counts for plan in priced.plans]
        measured = measure(priced, counts)
        _step(on_step, f"measured {len(measured)} marginals with OpenDP", 2, steps)
        fitted = estimate(priced, measured)
        _step(on_step, f"fitted {len(fitted.table)} cells to non-negative integers", 3, steps)
        with exchange.database.write() as conn:
            stored = self.store.insert(
                conn,
                synopsis_id=synopsis_id,
                dataset=dataset.id,
                estimate=fitted,
                cost=priced.cost,
                included=included,
                build_seconds=time.monotonic() - began,
                policy_version=policies.version,
            )
            exchange.audit.append(
                conn,
                actor=actor,
                action="synopsis.build",
                dataset=dataset.id,
                details={
                    "synopsis_id": synopsis_id,
                    "batches": len(included),
                    "cells": len(fitted.table),
                    "seconds": stored.build_seconds,
                },
            )
        _step(on_step, f"stored {synopsis_id}", steps, steps)
        return Built(
            stored=stored, shares=priced.shares, unit=unit, global_remaining=remaining.dataset
        )

    # -- describing -----------------------------------------------------------------------

    def describe(self, dataset: DatasetPolicy) -> dict[str, Any] | None:
        """The dataset's declared synopsis and its newest build, or None if none declared.

        ``built`` is None until a build finishes; ``stale`` says batches arrived after it.
        """
        if dataset.synopsis is None:
            return None
        unit = dataset.budget_unit
        view: dict[str, Any] = {
            "marginals": [list(m) for m in dataset.synopsis.marginals],
            "budget": {unit: float(dataset.synopsis.budget)},
            "built": None,
        }
        newest = self.store.newest(dataset.id)
        if newest is not None:
            view["built"] = {
                "synopsis_id": newest.synopsis_id,
                "built_at": _stamp(newest.built_at),
                "marginals": [list(m) for m in newest.marginals],
                "cost": {unit: float(newest.cost)},
                "batches": len(newest.batches),
                "build_seconds": newest.build_seconds,
                "stale": self.store.stale(newest),
            }
        return view

    # -- answering ------------------------------------------------------------------------

    def answer(
        self, principal: Principal, raw: Mapping[str, Any], *, idempotency_key: str | None
    ) -> Answer | None:
        """A free release from the synopsis, or None when the query takes the charged path.

        ``"source": "synopsis"`` is answered from the synopsis or refused (``NoSynopsis``,
        ``NotInSynopsis``). An accuracy-first query without a source is answered from the
        synopsis when every value's interval meets its target, else left to the charged path.
        """
        # One snapshot of the live policies for the whole request (see ``Exchange.run``): a
        # reload meanwhile must not give the release a version other than its grant's.
        policies = self.exchange.policies
        found = self._resolve(policies, principal, raw)
        if found is None:
            return None
        partner, dataset, grant, query, stored, values = found
        request_hash = hash_request(raw)
        if idempotency_key is not None:
            first = self.exchange.releases.find_idempotent(partner.id, idempotency_key)
            if first is not None:
                if first.request_hash != request_hash:
                    raise Conflict("this Idempotency-Key was already used for another request")
                return Answer(self._respond(first, dataset, grant, partner.id), cached=False)
        asked = _asked(query, dataset)
        key = content_key({"query": asked, "synopsis": stored.synopsis_id})
        for _attempt in range(3):
            earlier = self.exchange.releases.find(
                dataset=dataset.id, query_key=key, partner=partner.id
            )
            if earlier is not None:
                return Answer(self._respond(earlier, dataset, grant, partner.id), cached=True)
            try:
                document = self._release(
                    principal, partner, dataset, asked, stored, values, query.alpha, key,
                    request_hash, idempotency_key, policies.version,
                )  # fmt: skip
            except ReleaseConflict:
                # An identical answer (or one under the same Idempotency-Key) was stored
                # concurrently: answer with that one.
                if idempotency_key is not None:
                    first = self.exchange.releases.find_idempotent(partner.id, idempotency_key)
                    if first is not None:
                        return Answer(
                            self._respond(first, dataset, grant, partner.id), cached=False
                        )
                continue
            budget = self.exchange.reports.answer_budget(dataset, grant, partner.id)
            return Answer({**document, "budget": budget}, cached=False)
        raise InvalidQuery("source", "an identical synopsis answer is being stored; retry")

    def estimate(self, principal: Principal, raw: Mapping[str, Any]) -> dict[str, Any] | None:
        """What :meth:`answer` would return, without storing anything; None for the charged
        path. The result says ``"source": "synopsis"`` and costs nothing."""
        found = self._resolve(self.exchange.policies, principal, raw)
        if found is None:
            return None
        partner, dataset, grant, query, stored, values = found
        return {
            "dataset": dataset.id,
            "query": _asked(query, dataset),
            "cached": False,
            "source": SOURCE,
            "synopsis": stored.synopsis_id,
            "privacy": _free_privacy(dataset),
            "mechanism": _mechanism(dataset),
            "accuracy": {"alpha": query.alpha, "max_error": _widest(values)},
            "budget": self.exchange.reports.answer_budget(dataset, grant, partner.id),
        }

    def _resolve(
        self, policies: PolicySet, principal: Principal, raw: Mapping[str, Any]
    ) -> (
        tuple[
            PartnerPolicy,
            DatasetPolicy,
            Grant,
            Query,
            StoredSynopsis,
            list[SynopsisValue],
        ]
        | None
    ):
        source = raw.get("source")
        if source is not None and source != SOURCE:
            raise InvalidQuery("source", f"{source!r} is not a source; give 'synopsis' or omit it")
        if source is None and raw.get("accuracy") is None:
            return None
        exchange = self.exchange
        partner = access.partner(policies, principal)
        dataset_id = str(raw.get("dataset", ""))
        try:
            dataset = access.granted_dataset(policies, partner, dataset_id)
        except access.NoGrant as hidden:
            if source is None:
                return None  # the charged path refuses it, and records the refusal once
            self._refuse(principal, dataset_id, "policy", hidden.reason)
            raise
        if source is None and dataset.synopsis is None:
            return None
        query = (
            _free_query(raw, dataset, exchange.max_cells)
            if source == SOURCE
            else build_query(raw, dataset, max_cells=exchange.max_cells)
        )
        dimensions = set(query.group_by) | {name for name, _ in query.filters}
        try:
            grant = check_grant(
                partner,
                dataset,
                statistic=query.statistic,
                dimensions=dimensions,
                cost=Fraction(0),
                today=date.today(),
            )
        except PolicyViolation as refusal:
            if source is None:
                return None  # the charged path refuses it, and records the refusal once
            self._refuse(principal, dataset.id, "policy", str(refusal))
            raise
        stored = self.store.newest(dataset.id)
        if stored is None:
            if source is None:
                return None
            self._refuse(principal, dataset.id, "no_synopsis", "no synopsis built")
            raise NoSynopsis(
                f"dataset {dataset.id} has no synopsis"
                + (" declared" if dataset.synopsis is None else " built yet")
                + "; ask a direct query with a cost instead"
            )
        fitted = self.store.open(stored)
        try:
            values = answer_from(fitted, query, dataset)
        except NotInSynopsis as outside:
            if source is None:
                return None
            self._refuse(principal, dataset.id, "not_in_synopsis", str(outside))
            raise
        if source is None and (
            query.accuracy is None
            # A synopsis stored without the unbiased fit cannot vouch for an error bound.
            or fitted.unbiased is None
            or _widest(values) > query.accuracy.max_error
        ):
            return None
        return partner, dataset, grant, query, stored, values

    def _release(
        self,
        principal: Principal,
        partner: PartnerPolicy,
        dataset: DatasetPolicy,
        asked: dict[str, Any],
        stored: StoredSynopsis,
        values: list[SynopsisValue],
        alpha: float,
        key: str,
        request_hash: str,
        idempotency_key: str | None,
        policy_version: str,
    ) -> ReleaseDocument:
        exchange = self.exchange
        release_id = "rel_" + secrets.token_hex(10)
        rows = []
        for value in values:
            row: dict[str, Any] = dict(zip(asked["group_by"], value.cell, strict=True))
            row["value"] = value.value
            row["ci"] = [value.ci[0], value.ci[1]]
            rows.append(row)
        unsigned: UnsignedRelease = {
            "release_id": release_id,
            "dataset": dataset.id,
            "partner": partner.id,
            "query": asked,
            "source": {"synopsis": stored.synopsis_id},
            "rows": rows,
            "privacy": _free_privacy(dataset),
            "mechanism": _mechanism(dataset),
            "accuracy": {"alpha": alpha, "max_error": _widest(values)},
            "policy_version": policy_version,
            "created_at": _stamp(datetime.now(UTC)),
        }
        document: ReleaseDocument = {
            **unsigned,
            "signature": sign_document(exchange.keyring, unsigned),
        }
        # No charge: the answer is post-processing of a synopsis that was paid for. Stored
        # and completed in one transaction, so it is never seen half-made.
        with exchange.database.write() as conn:
            exchange.releases.insert(
                conn,
                release_id=release_id,
                dataset=dataset.id,
                partner=partner.id,
                query_key=key,
                request_hash=request_hash,
                idempotency_key=idempotency_key,
                policy_version=policy_version,
                document=document,
                measurement="",
            )
            exchange.audit.append(
                conn,
                actor=principal.actor,
                action="release.create",
                dataset=dataset.id,
                details={
                    "release_id": release_id,
                    "query_key": key,
                    "cells": len(rows),
                    "synopsis_id": stored.synopsis_id,
                },
            )
        return document

    def _respond(
        self, stored: StoredRelease, dataset: DatasetPolicy, grant: Grant, partner: str
    ) -> AnsweredRelease:
        budget = self.exchange.reports.answer_budget(dataset, grant, partner)
        return {**stored.document, "budget": budget}

    def _refuse(self, principal: Principal, dataset: str, reason: str, detail: str) -> None:
        with self.exchange.database.write() as conn:
            self.exchange.audit.append(
                conn,
                actor=principal.actor,
                action="query.refuse",
                dataset=dataset,
                details={"reason": reason, "detail": detail},
            )


def _free_query(raw: Mapping[str, Any], dataset: DatasetPolicy, max_cells: int) -> Query:
    """The query of a ``"source": "synopsis"`` request, validated like any other, cost-free."""
    for key in ("epsilon", "rho", "accuracy"):
        if raw.get(key) is not None:
            raise InvalidQuery(
                key,
                "an answer from the synopsis is free and as accurate as the synopsis; "
                f"remove {key}, or remove source to ask a direct query",
            )
    priced = {k: v for k, v in raw.items() if k != "source"}
    # Validated through the one query model, with a nominal cost that is then dropped.
    priced[dataset.budget_unit] = 1
    return replace(build_query(priced, dataset, max_cells=max_cells), cost=None)


def _asked(query: Query, dataset: DatasetPolicy) -> dict[str, Any]:
    """The canonical question of a synopsis answer: ``privacy`` names the synopsis."""
    if query.cost is None and query.accuracy is None:
        asked = canonical(replace(query, cost=Fraction(1)))
        asked["privacy"] = {"source": SOURCE}
    else:
        asked = canonical(query)
    asked["source"] = SOURCE
    return asked


def _free_privacy(dataset: DatasetPolicy) -> dict[str, Any]:
    unit = dataset.budget_unit
    privacy: dict[str, Any] = {"definition": dataset.definition}
    if dataset.definition == "zcdp":
        privacy["rho"] = 0.0
    privacy.update({"epsilon": 0.0, "delta": 0.0, "cost": {unit: "0"}})
    return privacy


def _mechanism(dataset: DatasetPolicy) -> dict[str, Any]:
    return {
        "name": "synopsis",
        "measurements": "discrete_laplace" if dataset.definition == "pure" else "discrete_gaussian",
        "estimator": "weighted non-negative least squares, rounded to integers",
    }


def _widest(values: list[SynopsisValue]) -> int:
    """How far any value's interval reaches from the value: a whole number, as the
    half-width of a count is (its ends are integers)."""
    return max((max(v.value - v.ci[0], v.ci[1] - v.value) for v in values), default=0)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _step(on_step: OnStep | None, what: str, done: int, total: int) -> None:
    if on_step is not None:
        on_step(what, done, total)
