"""The exchange: the one place where a request meets policy, DP engine, ledger and store.

The HTTP layer authenticates, parses and renders; every decision that concerns data or
budget is taken here, in this order for a query:

1. validate the query against the dataset's public schema (``dp.query``);
2. plan it — mechanism, scale, exact cost — without touching data (``dp.engine``, cached);
3. check the partner's grant (``policy.grants``);
4. answer from the release store when the same question was already answered;
5. check that the cost fits both budgets, reading the ledger only: a request that cannot
   be paid is refused before any cell is read or any noise is drawn;
6. read the cells, draw OpenDP noise and sign, in memory;
7. in ONE durable transaction: the conditional charge of both budgets, the release row,
   the ledger line and the audit entry. The answer leaves only after that commit.

Nothing computed in 6 leaves unless 7 commits: a release is never answered unpaid, nor
lost after it was sent. If 7 fails (the budget was spent meanwhile, or an identical query
committed first and the partner gets that release instead) the computed output is
discarded unseen. Whether the charge succeeds depends on budgets and stored releases only,
never on the data; a computation that fails after reading data is charged like a release.

Each request reads the live policy set once (``service.live_policies``) and asks every
question of that snapshot: who may see what (``service.access``), and what budget is shown
(``service.budget_reports``); the views' doors to those are one-line methods here. The
module stays above 500 lines because the steps above and their failure paths (a failed
computation charged, a concurrent winner answering, an idempotent replay) are one
transaction's story, which reads right only in one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from service import access
from service.access import Forbidden as Forbidden  # refusals of the exchange, for api/
from service.access import NotFound as NotFound  # refusals of the exchange, for api/
from service.audit.log import AuditLog
from service.audit.refusals import Refusal, RefusalLog
from service.auth.registry import Principal
from service.budget_reports import BudgetReports, Spend, budget_view
from service.crypto.keyring import Keyring
from service.crypto.signing import sign_document
from service.database.engine import Database
from service.dp.aggregate import true_aggregates
from service.dp.engine import (
    PlanCache,
    QueryPlan,
    measurement_json,
    plan_summary,
    release_values,
)
from service.dp.query import Query, build_query, canonical, hash_request, query_key
from service.dp.release import AnsweredRelease, ReleaseDocument, UnsignedRelease
from service.ledger.budgets import BudgetExhausted, ChargeLine, Ledger, Remaining
from service.ledger.releases import Position as Position  # where a page ends, for api/
from service.ledger.releases import ReleaseConflict, ReleaseStore, StoredRelease
from service.live_policies import LivePolicies
from service.policy.amounts import amount_text
from service.policy.errors import PolicyViolation
from service.policy.grants import check_grant
from service.policy.model import DatasetPolicy, Grant, PartnerPolicy, PolicySet
from service.store.batches import BatchStore, StoredBatch
from service.store.bounds import check_in_force, recorded_bounds
from service.store.ingest import parse_batch
from service.store.uploads import AlreadyStored, Upload

if TYPE_CHECKING:
    from service.synopses import Synopses


class Conflict(Exception):
    """The request clashes with an earlier one (an Idempotency-Key reused for another body)."""


@dataclass(frozen=True)
class Answer:
    """A release document as one caller receives it."""

    document: AnsweredRelease
    cached: bool


class Exchange:
    # Free answers from a dataset's synopsis, consulted before the charged path (set by
    # ``service.components``).
    synopses: Synopses | None = None

    def __init__(
        self,
        *,
        database: Database,
        keyring: Keyring,
        policies: PolicySet,
        store: BatchStore,
        ledger: Ledger,
        releases: ReleaseStore,
        audit: AuditLog,
        max_cells: int = 10_000,
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.live = LivePolicies(database, audit, policies)
        self.store = store
        self.ledger = ledger
        self.reports = BudgetReports(ledger)
        self.releases = releases
        self.audit = audit
        self.max_cells = max_cells
        # Identical refusals are folded into one audit entry and a count per minute.
        self.refusals = RefusalLog(database, audit)
        self._plans = PlanCache()

    # -- policies -------------------------------------------------------------------------

    @property
    def policies(self) -> PolicySet:
        """The set in force now: a request reads it once and keeps that snapshot."""
        return self.live.policies

    def replace_policies(self, policies: PolicySet, *, actor: str = "admin:reload") -> None:
        """Put ``policies`` in force, or raise ``PolicySetError`` and keep the current set."""
        self.live.replace_policies(policies, actor=actor)

    def refuse_policies(self, defects: Sequence[str], *, actor: str = "admin:reload") -> None:
        """Record in the audit log that a proposed policy set was refused, and why."""
        self.live.refuse_policies(defects, actor=actor)

    def dataset(self, dataset_id: str) -> DatasetPolicy:
        return access.dataset(self.policies, dataset_id)

    def partner(self, principal: Principal) -> PartnerPolicy:
        return access.partner(self.policies, principal)

    def visible_datasets(self, principal: Principal) -> list[tuple[DatasetPolicy, Grant | None]]:
        """Datasets the caller may see, with the partner's grant on each (None otherwise)."""
        return access.visible_datasets(self.policies, principal)

    def visible_dataset(
        self, principal: Principal, dataset_id: str
    ) -> tuple[DatasetPolicy, Grant | None]:
        return access.visible_dataset(self.policies, principal, dataset_id)

    # -- uploads --------------------------------------------------------------------------

    def upload(
        self,
        principal: Principal,
        dataset_id: str,
        body: bytes,
        *,
        content_type: str,
        form: str,
        idempotency_key: str | None = None,
        allow_duplicate: bool = False,
    ) -> StoredBatch:
        """Validate, aggregate, seal and store one batch; a rejected batch stores nothing.

        A retry with the same Idempotency-Key and body gets the first batch; a body that a
        stored batch already holds is refused unless ``allow_duplicate``.
        """
        dataset = access.owned_dataset(self.policies, principal, dataset_id)
        upload = Upload.of(
            self.keyring,
            dataset.id,
            body,
            form=form,
            idempotency_key=idempotency_key,
            allow_duplicate=allow_duplicate,
        )
        aggregated = parse_batch(
            body,
            content_type=content_type,
            form=form,  # type: ignore[arg-type]
            dataset=dataset,
        )
        try:
            return self.store.add(
                dataset, aggregated, form=form, actor=principal.actor, upload=upload
            )
        except AlreadyStored as retry:
            return self.store.get(retry.batch_id)

    # -- queries --------------------------------------------------------------------------

    def _prepare(
        self, policies: PolicySet, principal: Principal, raw: Mapping[str, Any]
    ) -> tuple[PartnerPolicy, DatasetPolicy, Grant, Query, QueryPlan]:
        partner = access.partner(policies, principal)
        dataset_id = str(raw.get("dataset", ""))
        try:
            dataset = access.granted_dataset(policies, partner, dataset_id)
        except access.NoGrant as hidden:
            self._record_refusal(principal, dataset_id, "policy", hidden.reason)
            raise
        query = build_query(raw, dataset, max_cells=self.max_cells)
        plan = self._plans.plan(policies.version, query, dataset)
        dimensions = set(query.group_by) | {name for name, _ in query.filters}
        try:
            grant = check_grant(
                partner,
                dataset,
                statistic=query.statistic,
                dimensions=dimensions,
                cost=plan.cost,
                today=date.today(),
            )
        except PolicyViolation as refusal:
            self._record_refusal(principal, dataset.id, "policy", str(refusal))
            raise
        return partner, dataset, grant, query, plan

    def estimate(self, principal: Principal, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Cost, noise and accuracy of a query, and what it would leave; spends nothing."""
        free = self.synopses.estimate(principal, raw) if self.synopses is not None else None
        if free is not None:
            return free
        partner, dataset, grant, query, plan = self._prepare(self.policies, principal, raw)
        # Only the partner's own release counts: that another partner asked the same
        # question is not the estimate's to tell.
        own = self.releases.find(dataset=dataset.id, query_key=query_key(query), partner=partner.id)
        cached = own is not None
        summary = plan_summary(plan)
        return {
            "dataset": dataset.id,
            "query": canonical(query),
            "cached": cached,
            # What running the query would charge: nothing when a stored release answers it.
            "privacy": _free(summary["privacy"]) if cached else summary["privacy"],
            "mechanism": summary["mechanism"],
            "accuracy": summary["accuracy"],
            "budget": self.reports.answer_budget(dataset, grant, partner.id),
            "source": "direct",
        }

    def run(
        self, principal: Principal, raw: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Answer:
        """Answer a query with a release: stored when repeated, otherwise noised then charged
        and stored in one transaction, before the answer leaves."""
        if self.synopses is not None:
            free = self.synopses.answer(principal, raw, idempotency_key=idempotency_key)
            if free is not None:
                return free
        # One snapshot of the live policies for the whole request: a reload meanwhile must
        # not give the release a version other than the one it was planned and priced under.
        policies = self.policies
        partner, dataset, grant, query, plan = self._prepare(policies, principal, raw)
        key = query_key(query)
        request_hash = hash_request(raw)
        if idempotency_key is not None:
            earlier = self.releases.find_idempotent(partner.id, idempotency_key)
            if earlier is not None:
                return self._replay(earlier, request_hash, dataset, grant, partner.id)
        # One read transaction for all that is looked at before the charge: a stored answer,
        # then what the budget has left, then the cells. Only the charge decides whether the
        # release may leave; these reads merely avoid work.
        refused: BudgetExhausted | None = None
        failed: Exception | None = None
        with self.database.read() as snapshot:
            stored = self._cached(dataset, partner.id, key, within=snapshot)
            if stored is None:
                try:
                    self.ledger.check(
                        dataset=dataset.id,
                        partner=partner.id,
                        unit=dataset.budget_unit,
                        amount=plan.cost,
                        partner_budget=grant.budget,
                        global_budget=dataset.global_budget,
                        within=snapshot,
                    )
                except BudgetExhausted as exhausted:
                    refused = exhausted
                else:
                    release_id = "rel_" + secrets.token_hex(10)
                    try:
                        document = self._compute(
                            release_id, dataset, partner.id, query, plan, policies.version, snapshot
                        )
                    except Exception as failure:
                        failed = failure
        # Written only once the snapshot's connection is back in the pool: a request never
        # holds two, so a burst of requests cannot exhaust the pool waiting on itself.
        if refused is not None:
            self._record_refusal(principal, dataset.id, "budget_exhausted", str(refused))
            raise refused
        if failed is not None:
            # The data was read and may have caused the failure: pay for it as for a
            # release, so that no outcome that depends on the data is free.
            self._charge_failure(principal, partner, dataset, grant, plan, key, failed)
            raise failed
        if stored is not None:
            if idempotency_key is not None:
                # A concurrent request under the same key may have released this very query
                # since the check above: it is then this request's first answer, not a repeat.
                earlier = self.releases.find_idempotent(partner.id, idempotency_key)
                if earlier is not None:
                    return self._replay(earlier, request_hash, dataset, grant, partner.id)
            return Answer(self._respond(stored, dataset, grant, partner.id), cached=True)
        try:
            remaining = self._commit(
                principal,
                partner,
                dataset,
                grant,
                plan,
                key,
                request_hash,
                idempotency_key,
                document,
            )
        except BudgetExhausted as exhausted:
            # Spent by concurrent requests since the check: the output is discarded unseen.
            self._record_refusal(principal, dataset.id, "budget_exhausted", str(exhausted))
            raise
        except ReleaseConflict:
            # A concurrent request committed first: its release answers this one, and the
            # output computed here is discarded unseen (never two noises for one question).
            return self._answer_from_winner(
                partner.id, dataset, grant, key, request_hash, idempotency_key
            )
        answered: AnsweredRelease = {**document, "budget": budget_view(dataset, remaining)}
        return Answer(answered, cached=False)

    def _compute(
        self,
        release_id: str,
        dataset: DatasetPolicy,
        partner: str,
        query: Query,
        plan: QueryPlan,
        policy_version: str,
        within: Connection | None = None,
    ) -> ReleaseDocument:
        """The signed release document: cells read, noise drawn, nothing stored or sent."""
        aggregates = true_aggregates(self.store.cells(dataset, within), query, dataset)
        values = release_values(plan, aggregates)
        unsigned = self._document(release_id, dataset, partner, query, plan, values, policy_version)
        return {**unsigned, "signature": sign_document(self.keyring, unsigned)}

    def _commit(
        self,
        principal: Principal,
        partner: PartnerPolicy,
        dataset: DatasetPolicy,
        grant: Grant,
        plan: QueryPlan,
        key: str,
        request_hash: str,
        idempotency_key: str | None,
        document: ReleaseDocument,
    ) -> Remaining:
        """Store a computed release with its charge, ledger line and audit entry, atomically."""
        release_id = document["release_id"]
        with self.database.write() as conn:
            # The release row first: a conflict with a concurrent identical query is found
            # before any budget row is locked.
            self.releases.insert(
                conn,
                release_id=release_id,
                dataset=dataset.id,
                partner=partner.id,
                query_key=key,
                request_hash=request_hash,
                idempotency_key=idempotency_key,
                policy_version=document["policy_version"],
                document=document,
                measurement=measurement_json(plan),
            )
            remaining = self._charge(
                conn,
                principal=principal,
                partner=partner,
                dataset=dataset,
                grant=grant,
                plan=plan,
                release_id=release_id,
                key=key,
                action="release.create",
                details={"release_id": release_id, "cells": len(document["rows"])},
            )
            # Under the audit head, which uploads and reloads take too: the plan's sensitivity
            # assumes this worker's bounds, so they must still be the ones in force, or the
            # release is discarded unseen and nothing is charged.
            check_in_force(conn, dataset.id, recorded_bounds(dataset))
        return remaining

    def _charge(
        self,
        conn: Connection,
        *,
        principal: Principal,
        partner: PartnerPolicy,
        dataset: DatasetPolicy,
        grant: Grant,
        plan: QueryPlan,
        release_id: str,
        key: str,
        action: str,
        details: dict[str, Any],
    ) -> Remaining:
        """Charge both budgets in ``conn``'s transaction, with the ledger line and the audit
        entry ``action`` (its details plus the partner, the cost and the query)."""
        remaining = self.ledger.charge(
            conn,
            dataset=dataset.id,
            partner=partner.id,
            unit=dataset.budget_unit,
            amount=plan.cost,
            partner_budget=grant.budget,
            global_budget=dataset.global_budget,
        )
        self.ledger.record(
            conn,
            release_id=release_id,
            dataset=dataset.id,
            partner=partner.id,
            definition=dataset.definition,
            amount=plan.cost,
        )
        self.audit.append(
            conn,
            actor=principal.actor,
            action=action,
            dataset=dataset.id,
            details={
                **details,
                "partner": partner.id,
                dataset.budget_unit: amount_text(plan.cost),
                "query_key": key,
            },
        )
        return remaining

    def _charge_failure(
        self,
        principal: Principal,
        partner: PartnerPolicy,
        dataset: DatasetPolicy,
        grant: Grant,
        plan: QueryPlan,
        key: str,
        failure: Exception,
    ) -> None:
        """Charge a computation that failed after reading data, or refuse it for budget.

        If the budget no longer fits, the request is refused as any unpaid one is, so the
        caller learns no more than from a computation that succeeded.
        """
        charge_id = "rel_" + secrets.token_hex(10)
        try:
            with self.database.write() as conn:
                self._charge(
                    conn,
                    principal=principal,
                    partner=partner,
                    dataset=dataset,
                    grant=grant,
                    plan=plan,
                    release_id=charge_id,
                    key=key,
                    action="release.fail",
                    details={"charge_id": charge_id, "error": type(failure).__name__},
                )
        except BudgetExhausted as exhausted:
            self._record_refusal(principal, dataset.id, "budget_exhausted", str(exhausted))
            raise exhausted from None

    def _answer_from_winner(
        self,
        partner: str,
        dataset: DatasetPolicy,
        grant: Grant,
        key: str,
        request_hash: str,
        idempotency_key: str | None,
    ) -> Answer:
        if idempotency_key is not None:
            earlier = self.releases.find_idempotent(partner, idempotency_key)
            if earlier is not None:
                return self._replay(earlier, request_hash, dataset, grant, partner)
        stored = self._cached(dataset, partner, key)
        if stored is None:
            raise Conflict("a concurrent request conflicted with this one; retry")
        return Answer(self._respond(stored, dataset, grant, partner), cached=True)

    def _replay(
        self,
        earlier: StoredRelease,
        request_hash: str,
        dataset: DatasetPolicy,
        grant: Grant,
        partner: str,
    ) -> Answer:
        """The first answer to an Idempotency-Key, to a retry of the same request only."""
        if earlier.request_hash != request_hash:
            raise Conflict("this Idempotency-Key was already used for another request")
        return Answer(self._respond(earlier, dataset, grant, partner), cached=False)

    def _document(
        self,
        release_id: str,
        dataset: DatasetPolicy,
        partner: str,
        query: Query,
        plan: QueryPlan,
        values: list[Any],
        policy_version: str,
    ) -> UnsignedRelease:
        summary = plan_summary(plan)
        rows = []
        for noisy in values:
            row: dict[str, Any] = dict(zip(query.group_by, noisy.cell, strict=True))
            row["value"] = noisy.value
            row["ci"] = [noisy.ci[0], noisy.ci[1]]
            rows.append(row)
        return {
            "release_id": release_id,
            "dataset": dataset.id,
            "partner": partner,
            "query": canonical(query),
            "rows": rows,
            "privacy": summary["privacy"],
            "mechanism": summary["mechanism"],
            "accuracy": summary["accuracy"],
            "policy_version": policy_version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def _respond(
        self, stored: StoredRelease, dataset: DatasetPolicy, grant: Grant, partner: str
    ) -> AnsweredRelease:
        """The stored, signed document plus the caller's current budget (not signed)."""
        return {**stored.document, "budget": self.reports.answer_budget(dataset, grant, partner)}

    def _cached(
        self,
        dataset: DatasetPolicy,
        partner: str,
        key: str,
        within: Connection | None = None,
    ) -> StoredRelease | None:
        own = self.releases.find(dataset=dataset.id, query_key=key, partner=partner, within=within)
        if own is not None or not dataset.share_releases:
            return own
        return self.releases.find(dataset=dataset.id, query_key=key, partner=None, within=within)

    def _record_refusal(self, principal: Principal, dataset: str, reason: str, detail: str) -> None:
        self.refusals.record(Refusal(principal.actor, dataset, reason, detail))

    # -- reading releases and budgets ------------------------------------------------------

    def list_releases(self, principal: Principal, *, limit: int = 100) -> list[dict[str, Any]]:
        return self.page_releases(principal, limit=limit)[0]

    def page_releases(
        self, principal: Principal, *, limit: int = 100, after: Position | None = None
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """One page of the caller's releases (all partners' for a DPO), newest first, and
        the position to continue from (None on the last page)."""
        own = access.seen_partner(self.policies, principal)
        partners = None if own is None else [own]
        stored = self.releases.list(partners=partners, limit=limit + 1, after=after)
        more = len(stored) > limit
        return [dict(s.document or {}) for s in stored[:limit]], (
            Position.of(stored[limit - 1]) if more else None
        )

    def get_release(self, principal: Principal, release_id: str) -> dict[str, Any]:
        stored = self.releases.get(release_id)
        if stored is None or not access.may_read(self.policies, principal, stored):
            raise NotFound(f"no release {release_id!r}")
        return dict(stored.document)

    def budgets(self, principal: Principal) -> list[dict[str, Any]]:
        """Granted, spent and remaining per grant, with each dataset's global budget."""
        policies = self.policies
        return self.reports.grants(policies, access.budget_partners(policies, principal))

    def dataset_spend(self, dataset: DatasetPolicy) -> Spend:
        """The dataset's spend of its global budget."""
        return self.reports.dataset_spend(dataset)

    def grant_spend(self, dataset: DatasetPolicy, grant: Grant, partner: str) -> Spend:
        """A partner's spend of its grant on the dataset."""
        return self.reports.grant_spend(dataset, grant, partner)

    def all_spent(self) -> Mapping[tuple[str, str], Fraction]:
        """Spend of every account, keyed by (dataset, partner), for reloads and metrics."""
        return self.reports.all_spent()

    def charges(self, principal: Principal) -> list[ChargeLine]:
        """The charges the caller may see (every partner's for a DPO), oldest first."""
        return self.reports.charges(access.seen_partner(self.policies, principal))


def _free(privacy: Mapping[str, Any]) -> dict[str, Any]:
    """A plan's privacy summary with every cost set to zero."""
    free = dict(privacy, epsilon=0.0, cost={unit: "0" for unit in privacy.get("cost", {})})
    if "rho" in free:
        free["rho"] = 0.0
    return free
