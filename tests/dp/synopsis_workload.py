"""A helpline-scale dataset with a synopsis, and a partner's dozen-question workload.

Shared by the statistical tests of synopses and by ``scripts/bench synopsis``: 12 months x 4
channels x 6 referral sources x 3 caller types, about 3,500 contacts a year (synthetic),
zCDP with at most 4 contacts per person; the synopsis measures [month, channel], [month,
referral_source] and [channel, referral_source] for rho 0.5.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl

from service.dp.query import Query
from service.policy.model import DatasetPolicy, Dimension, SynopsisPolicy

MONTHS = tuple(f"2024-{m:02d}" for m in range(1, 13))
CHANNELS = ("phone", "chat", "email", "web")
SOURCES = (
    "social_media_ad",
    "police_warning",
    "search_warning",
    "professional",
    "word_of_mouth",
    "other",
)
CALLERS = ("self_concerned", "family_friend", "professional")
MARGINALS = (("month", "channel"), ("month", "referral_source"), ("channel", "referral_source"))
SYNOPSIS_RHO = Fraction(1, 2)

HELPLINE = DatasetPolicy(
    id="helpline-bench",
    title="Helpline-scale synopsis benchmark (synthetic)",
    owner="bench-owner",
    definition="zcdp",
    unit="person",
    max_contacts_per_person=4,
    max_contacts_per_cell=None,
    delta=Fraction(1, 10**7),
    global_budget=Fraction(1000),
    share_releases=False,
    dimensions=(
        Dimension("month", "month", MONTHS),
        Dimension("channel", "categorical", CHANNELS),
        Dimension("referral_source", "categorical", SOURCES),
        Dimension("caller_type", "categorical", CALLERS),
    ),
    measures=(),
    source="datasets/helpline-bench.yaml",
    synopsis=SynopsisPolicy(marginals=MARGINALS, budget=SYNOPSIS_RHO),
)

POLICY_YAML = f"""id: helpline-bench
title: Helpline-scale synopsis benchmark (synthetic)
owner: bench-owner
privacy:
  definition: zcdp
  unit: person
  max_contacts_per_person: 4
  delta: 1e-7
  global_budget: {{rho: 1000}}
dimensions:
  month: {{type: month, from: 2024-01, to: 2024-12}}
  channel: {{values: [{", ".join(CHANNELS)}]}}
  referral_source: {{values: [{", ".join(SOURCES)}]}}
  caller_type: {{values: [{", ".join(CALLERS)}]}}
synopsis:
  marginals:
{"".join(f"    - [{', '.join(m)}]{chr(10)}" for m in MARGINALS)}  budget: {{rho: 0.5}}
"""


def true_table(seed: int = 2024, contacts: int = 3500) -> np.ndarray:
    """Counts over month x channel x referral_source x caller_type: seasonal, skewed, with
    many small cells, as a helpline's year looks."""
    rng = np.random.default_rng(seed)
    month = 1 + 0.3 * np.sin(np.arange(12) / 12 * 2 * np.pi)
    channel = np.array([0.45, 0.3, 0.15, 0.1])
    source = np.array([0.3, 0.1, 0.2, 0.15, 0.15, 0.1])
    caller = np.array([0.6, 0.3, 0.1])
    weights = np.einsum("a,b,c,d->abcd", month, channel, source, caller)
    weights *= rng.gamma(2.0, 0.5, size=weights.shape)
    weights /= weights.sum()
    return rng.multinomial(contacts, weights.reshape(-1)).reshape(weights.shape)


def cells_csv(table: np.ndarray) -> str:
    """The table as a cell-level upload (``form=cells``): one row per non-empty cell."""
    rows = [
        {"month": m, "channel": c, "referral_source": s, "caller_type": t, "contacts": int(n)}
        for (m, c, s, t), n in zip(
            itertools.product(MONTHS, CHANNELS, SOURCES, CALLERS), table.reshape(-1), strict=True
        )
        if n
    ]
    return pl.DataFrame(rows).write_csv()


def _quarter(q: int) -> tuple[str, ...]:
    return MONTHS[3 * q : 3 * q + 3]


WORKLOAD: tuple[dict[str, Any], ...] = (
    {"group_by": ("month",)},
    {"group_by": ("month", "channel")},
    {"group_by": ("month", "referral_source")},
    {"group_by": ("channel", "referral_source")},
    *({"group_by": ("channel",), "filters": (("month", _quarter(q)),)} for q in range(4)),
    {"group_by": ("referral_source",)},
    {"group_by": (), "filters": (("month", MONTHS[:6]),)},
    {"group_by": (), "filters": (("month", MONTHS[6:]),)},
    {"group_by": ("month",), "filters": (("channel", ("chat",)),)},
)
"""A partner's dozen questions: monthly series, monthly by channel and by referral source,
channel x referral source, quarterly totals by channel, yearly by referral source, half-year
totals, chat contacts by month."""


def workload_queries(cost: Fraction | None) -> list[Query]:
    """The workload as count queries, each priced at ``cost`` (None: no cost, as asked of a
    synopsis)."""
    return [
        Query(
            dataset=HELPLINE.id,
            statistic="count",
            measure=None,
            group_by=tuple(spec["group_by"]),
            filters=tuple(spec.get("filters", ())),
            cost=cost,
            accuracy=None,
            budget_unit="rho",
        )
        for spec in WORKLOAD
    ]


def request_body(query: Query) -> dict[str, Any]:
    """The JSON body of ``query`` for POST /v1/queries (without a cost or source)."""
    return {
        "dataset": query.dataset,
        "statistic": "count",
        "group_by": list(query.group_by),
        "filters": {name: list(values) for name, values in query.filters},
    }


def true_answers(table: np.ndarray, query: Query) -> np.ndarray:
    """The exact answer of ``query`` over ``table``, one value per output cell, in the
    order of ``group_cells``."""
    axes = {"month": 0, "channel": 1, "referral_source": 2, "caller_type": 3}
    domains = {d.name: d.values for d in HELPLINE.dimensions}
    kept = table
    for name, values in query.filters:
        index = [domains[name].index(v) for v in values]
        kept = np.take(kept, index, axis=axes[name])
    grouped = [axes[name] for name in query.group_by]
    summed = tuple(a for a in range(4) if a not in grouped)
    result = kept.sum(axis=summed)
    return np.asarray(result).reshape(-1)
