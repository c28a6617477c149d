"""Whether a partner's grant allows a query: the policy gate in front of every charge.

``check_grant`` only reads policy; it neither charges budget nor looks at data, so a refused
query costs nothing and reveals nothing. Whether enough budget remains is the ledger's
question, asked after this one.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from service.policy.amounts import amount_text
from service.policy.errors import PolicyViolation
from service.policy.model import STATISTICS, DatasetPolicy, Grant, PartnerPolicy


def check_grant(
    partner: PartnerPolicy,
    dataset: DatasetPolicy,
    *,
    statistic: str,
    dimensions: set[str],
    cost: Fraction,
    today: date,
) -> Grant:
    """The partner's grant on ``dataset`` if it allows this query, else ``PolicyViolation``.

    ``dimensions`` are all dimensions the query uses, in ``group_by`` or in ``filters``: a
    filter on a dimension reveals as much about it as grouping by it. ``cost`` is in the
    dataset's budget unit. A grant is valid through its ``expires`` day inclusive. Rules are
    checked in the order no_grant, expired, statistic, dimension, max_per_query.
    """
    grant = partner.grant_for(dataset.id)
    if grant is None:
        raise PolicyViolation("no_grant", f"partner {partner.id} has no grant for {dataset.id}")
    if grant.expires is not None and today > grant.expires:
        raise PolicyViolation(
            "expired", f"grant for {dataset.id} expired on {grant.expires.isoformat()}"
        )
    if statistic not in grant.statistics:
        allowed: list[str] = [name for name in STATISTICS if name in grant.statistics]
        raise PolicyViolation(
            "statistic",
            f"grant for {dataset.id} allows statistics {', '.join(allowed)}; "
            f"'{statistic}' is not allowed",
        )
    refused = dimensions - grant.dimensions
    if refused:
        order = [dimension.name for dimension in dataset.dimensions]
        allowed = [name for name in order if name in grant.dimensions]
        # Declared dimensions in schema order, then names the dataset lacks, alphabetically.
        ranked = sorted(
            refused, key=lambda name: (name not in order, name in order and order.index(name), name)
        )
        named = ", ".join(f"'{name}'" for name in ranked)
        raise PolicyViolation(
            "dimension",
            f"grant for {dataset.id} allows dimensions {', '.join(allowed) or '(none)'}; "
            f"{named} {'is' if len(refused) == 1 else 'are'} not allowed",
        )
    if grant.max_per_query is not None and cost > grant.max_per_query:
        unit = dataset.budget_unit
        raise PolicyViolation(
            "max_per_query",
            f"grant for {dataset.id} allows at most {unit} {amount_text(grant.max_per_query)} "
            f"per query; this query costs {unit} {amount_text(cost)}",
        )
    return grant
