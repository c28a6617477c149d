"""Who may see what: the datasets, releases, budgets and charges visible to a caller.

Every rule reads one policy set, passed in by the caller: a request takes one snapshot of
the live set and asks every question of it, so a reload in between cannot give one answer
two policies. A DPO sees everything; a dataset's owner sees its own dataset; a partner sees
the datasets it holds a grant on and its own releases, budgets and charges, plus the
releases other partners share that it could have asked for itself. Something the caller may
not see looks exactly like something that does not exist.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from service.auth.registry import Principal
from service.ledger.releases import StoredRelease
from service.policy.errors import PolicyViolation
from service.policy.grants import check_grant
from service.policy.model import DatasetPolicy, Grant, PartnerPolicy, PolicySet


class NotFound(LookupError):
    """No such thing, or not one the caller may see (the two look alike on purpose)."""


class Forbidden(PermissionError):
    """The caller's role may not do this."""


def dataset(policies: PolicySet, dataset_id: str) -> DatasetPolicy:
    """The dataset of that id, whoever asks."""
    found = policies.datasets.get(dataset_id)
    if found is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return found


class NoGrant(NotFound):
    """A dataset the partner holds no grant on: to the partner it is no dataset at all."""

    def __init__(self, partner: PartnerPolicy, dataset_id: str) -> None:
        super().__init__(f"no dataset {dataset_id!r}")
        self.reason = f"partner {partner.id} has no grant for {dataset_id}"


def granted_dataset(policies: PolicySet, grantee: PartnerPolicy, dataset_id: str) -> DatasetPolicy:
    """The dataset a partner asks a question of: ``NoGrant`` (a ``NotFound``) unless the
    partner holds a grant on it. Checked before the question is read at all, so that no
    answer to it (an error naming a dimension, a measure or the privacy definition) can
    tell a dataset without a grant from one that does not exist."""
    found = dataset(policies, dataset_id)
    if grantee.grant_for(found.id) is None:
        raise NoGrant(grantee, found.id)
    return found


def partner(policies: PolicySet, principal: Principal) -> PartnerPolicy:
    """The caller's partner policy; ``Forbidden`` unless the caller is a partner that has one."""
    found = policies.partners.get(principal.subject or "")
    if principal.role != "partner" or found is None:
        raise Forbidden("this needs a partner token whose partner has a policy")
    return found


def owned_dataset(policies: PolicySet, principal: Principal, dataset_id: str) -> DatasetPolicy:
    """The dataset the caller uploads to: only its owner's token may."""
    if principal.role != "owner" or principal.subject != dataset_id:
        # Another helpline's dataset looks exactly like one that does not exist.
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset(policies, dataset_id)


def visible_datasets(
    policies: PolicySet, principal: Principal
) -> list[tuple[DatasetPolicy, Grant | None]]:
    """Datasets the caller may see, with the partner's grant on each (None otherwise)."""
    datasets = sorted(policies.datasets.values(), key=lambda d: d.id)
    if principal.role == "dpo":
        return [(d, None) for d in datasets]
    if principal.role == "owner":
        return [(d, None) for d in datasets if d.id == principal.subject]
    grantee = partner(policies, principal)
    return [(d, g) for d in datasets if (g := grantee.grant_for(d.id)) is not None]


def visible_dataset(
    policies: PolicySet, principal: Principal, dataset_id: str
) -> tuple[DatasetPolicy, Grant | None]:
    """One dataset the caller may see, with the partner's grant on it."""
    for found, grant in visible_datasets(policies, principal):
        if found.id == dataset_id:
            return found, grant
    raise NotFound(f"no dataset {dataset_id!r}")


def seen_partner(policies: PolicySet, principal: Principal) -> str | None:
    """The one partner whose releases and charges the caller sees; None (all) for a DPO."""
    return None if principal.role == "dpo" else partner(policies, principal).id


def budget_partners(policies: PolicySet, principal: Principal) -> list[PartnerPolicy]:
    """The partners whose grants the caller's budget report shows."""
    if principal.role == "dpo":
        return sorted(policies.partners.values(), key=lambda p: p.id)
    if principal.role == "partner":
        return [partner(policies, principal)]
    raise Forbidden("budgets are for partners and DPOs")


def may_read(policies: PolicySet, principal: Principal, stored: StoredRelease) -> bool:
    """Whether the caller may read a stored release by its id."""
    if principal.role == "dpo":
        return True
    if principal.role != "partner":
        return False
    if stored.partner == principal.subject:
        return True
    # A shared release is readable by another partner only if that partner could have
    # asked the same question now: the grant rules of a query, max_per_query included
    # (at the release's own cost), though reading it charges nothing.
    shared = policies.datasets.get(stored.dataset)
    reader = policies.partners.get(principal.subject or "")
    if not (shared and shared.share_releases and reader):
        return False
    query = stored.document.get("query", {})
    dimensions = set(query.get("group_by", [])) | set(query.get("filters", {}))
    cost = stored.document.get("privacy", {}).get("cost", {}).get(shared.budget_unit)
    if not isinstance(cost, str):
        return False
    try:
        check_grant(
            reader,
            shared,
            statistic=str(query.get("statistic")),
            dimensions=dimensions,
            cost=Fraction(cost),
            today=date.today(),
        )
    except PolicyViolation:
        return False
    return True
