"""The empirical privacy audit: do releases lose no more privacy than they charge?

Two neighbouring datasets differ in one person, who has many contacts in one cell. Both are
uploaded through the real ingest and store (``Exchange.upload``: ``parse_batch`` then
``BatchStore.add``) and queried many times through the real query path (``Exchange.run``:
plan, grant, charge, OpenDP noise, signed release), each time as a distinct question (its
``alpha``), so every release draws fresh noise. ``tests.privacy_audit`` turns the releases
into a Clopper-Pearson lower bound on epsilon, which must not exceed the claimed epsilon.

The same harness must catch a broken mechanism. The engine pipeline (stored cells, true
aggregates, plan, noise) takes the mechanism as a parameter: the exact plan, a plan
calibrated to half the sensitivity, and a plan with a third of the noise scale; the broken
two must be flagged.

Pure DP, epsilon = 1, discrete Laplace, a count of one cell, ``C = 6``. At the threshold
"release >= true count with the person" the exact ratio of the two probabilities is
``e**(distance / scale)``: ``e**1`` when the bound holds, ``e**2`` and ``e**3`` for the broken
variants; a person who put ``C`` contacts in each of three batches, all counted, also gives
``e**3``. With a confidence of ``1 - 1e-6`` a correct path is flagged by chance in at most one
run in a million; the trial counts are chosen so that at the ``1e-7`` quantiles of both
binomials (a broken path escaping in fewer than one run in five million) the bound is still
above 1.25.

The person spread over batches is flagged until ingest bounds a person across batches (each
batch is truncated on its own, so all three batches' contacts are counted against a bound
of ``C``): that test fails on purpose until then.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from service.auth.registry import Principal
from service.components import Components
from service.dp.aggregate import true_aggregates
from service.dp.engine import QueryPlan, plan_query, release_values
from service.dp.mechanisms import build_measurement, plan_for_cost
from service.dp.query import build_query
from tests.privacy_audit import Audit, audit

pytestmark = pytest.mark.slow

CLAIMED_EPSILON = 1.0
BOUND = 6  # max_contacts_per_person: the audited person's contacts per batch
TARGET = {"month": ["2024-01"], "channel": ["chat"]}
EXCHANGE_TRIALS = 1000
ENGINE_TRIALS = 3000

DATASETS = (
    "audit-single-with",
    "audit-single-without",
    "audit-spread-with",
    "audit-spread-without",
)


def _dataset_policy(dataset_id: str) -> str:
    return f"""
id: {dataset_id}
title: Privacy audit dataset (synthetic test data)
owner: audit-helpline
privacy:
  definition: pure
  unit: person
  max_contacts_per_person: {BOUND}
  global_budget: {{epsilon: 100000}}
dimensions:
  month: {{type: month, from: 2024-01, to: 2024-02}}
  channel: {{values: [phone, chat]}}
"""


AUDITOR = "\n".join(
    [
        "id: auditor",
        "name: Privacy auditor with generous test budgets",
        "jurisdiction: GB",
        "grants:",
        *(
            f"  - dataset: {dataset_id}\n"
            "    budget: {epsilon: 100000}\n"
            "    statistics: [count]\n"
            "    dimensions: [month, channel]"
            for dataset_id in DATASETS
        ),
    ]
)


@pytest.fixture
def database_url() -> Iterator[str]:
    """A real SQLite database in memory-backed storage where there is one: the audit commits
    thousands of charges, and their fsyncs on a shared disk would dominate its time."""
    shared_memory = Path("/dev/shm")  # noqa: S108 - only a private (0700) directory under it
    with tempfile.TemporaryDirectory(dir=shared_memory if shared_memory.is_dir() else None) as d:
        yield f"sqlite:///{Path(d) / 'dpx.sqlite3'}"


@pytest.fixture(autouse=True)
def audit_policies(policy_dir: Path) -> Path:
    for dataset_id in DATASETS:
        path = policy_dir / "datasets" / f"{dataset_id}.yaml"
        path.write_text(_dataset_policy(dataset_id).lstrip(), encoding="utf-8")
    (policy_dir / "partners" / "auditor.yaml").write_text(AUDITOR + "\n", encoding="utf-8")
    return policy_dir


def _batch(tag: str, *, audited: bool) -> bytes:
    """One batch: 7 callers with 2 contacts each in the target cell, a few more in every cell,
    and (if ``audited``) the audited person with ``BOUND`` contacts in the target cell."""
    lines = ["month,channel,person"]
    for index in range(7):
        lines += [f"2024-01,chat,{tag}-caller-{index}"] * 2
    for index, (month, channel) in enumerate(
        itertools.product(("2024-01", "2024-02"), ("phone", "chat"))
    ):
        lines += [f"{month},{channel},{tag}-other-{index}"] * (index + 1)
    if audited:
        lines += ["2024-01,chat,audited-person"] * BOUND
    return ("\n".join(lines) + "\n").encode()


def _upload(components: Components, dataset_id: str, batches: list[bytes]) -> None:
    owner = Principal(token_id="audit", role="owner", subject=dataset_id)
    for body in batches:
        components.exchange.upload(
            owner, dataset_id, body, content_type="text/csv", form="contacts"
        )


@pytest.fixture
def stored(components: Components) -> Iterator[Components]:
    """The four datasets, stored: the audited person in one batch, and spread over three."""
    _upload(components, "audit-single-with", [_batch("m1", audited=True)])
    _upload(components, "audit-single-without", [_batch("m1", audited=False)])
    months = ("m1", "m2", "m3")
    _upload(components, "audit-spread-with", [_batch(tag, audited=True) for tag in months])
    _upload(components, "audit-spread-without", [_batch(tag, audited=False) for tag in months])
    yield components


def _query(dataset_id: str, index: int) -> dict[str, object]:
    # A distinct alpha makes each release a distinct question: no stored answer, fresh noise.
    # Alpha only widens the interval; the noise depends on epsilon and the sensitivity.
    return {
        "dataset": dataset_id,
        "statistic": "count",
        "filters": TARGET,
        "epsilon": CLAIMED_EPSILON,
        "alpha": 0.01 + index * 1e-6,
    }


def _exchange_release(components: Components, dataset_id: str) -> Callable[[int], int]:
    auditor = Principal(token_id="audit", role="partner", subject="auditor")

    def release(index: int) -> int:
        answer = components.exchange.run(auditor, _query(dataset_id, index))
        assert answer.cached is False
        value = answer.document["rows"][0]["value"]
        assert isinstance(value, int)
        return value

    return release


Mechanism = Callable[[QueryPlan], QueryPlan]


def _engine_release(
    components: Components, dataset_id: str, mechanism: Mechanism
) -> Callable[[int], int]:
    """Releases through the engine pipeline, with ``mechanism`` deciding the plan's noise."""
    dataset = components.exchange.dataset(dataset_id)

    def release(index: int) -> int:
        # Nothing here answers from a store: the same question draws fresh noise every time.
        query = build_query(_query(dataset_id, 0), dataset)
        plan = mechanism(plan_query(query, dataset))
        aggregates = true_aggregates(components.store.cells(dataset), query, dataset)
        return int(release_values(plan, aggregates)[0].value)

    return release


def exact(plan: QueryPlan) -> QueryPlan:
    return plan


def halved_sensitivity(plan: QueryPlan) -> QueryPlan:
    """The plan priced as if one person moved the count by half as much as they can."""
    count = plan.plans["count"]
    broken = plan_for_cost(count.definition, count.sensitivity / 2, count.cost, count.alpha)
    return replace(plan, plans={"count": broken})


def third_of_the_scale(plan: QueryPlan) -> QueryPlan:
    """The plan's measurement with a third of the noise scale it charges for."""
    count = plan.plans["count"]
    scale = count.scale / 3
    broken = replace(count, scale=scale, measurement=build_measurement(count.definition, scale))
    return replace(plan, plans={"count": broken})


def _threshold(components: Components, dataset_id: str) -> int:
    """The true count of the target cell with the audited person: fixed before any release."""
    dataset = components.exchange.dataset(dataset_id)
    query = build_query(_query(dataset_id, 0), dataset)
    return true_aggregates(components.store.cells(dataset), query, dataset).counts[0]


def _report(result: Audit, record_property: Callable[[str, object], None]) -> None:
    print(result.summary())
    record_property(result.scenario, result.summary())


def test_a_person_in_one_batch_costs_no_more_than_claimed(
    stored: Components, record_property: Callable[[str, object], None]
) -> None:
    threshold = _threshold(stored, "audit-single-with")
    assert threshold == _threshold(stored, "audit-single-without") + BOUND
    result = audit(
        "exchange, person in one batch",
        release_with=_exchange_release(stored, "audit-single-with"),
        release_without=_exchange_release(stored, "audit-single-without"),
        threshold=threshold,
        trials=EXCHANGE_TRIALS,
        claimed_epsilon=CLAIMED_EPSILON,
    )
    _report(result, record_property)
    assert not result.violated, result.summary()
    # Not blind: the person shows. The exact ratio of the two hit rates is e; at the 1e-7
    # quantiles of both binomials it is still above 1.7.
    assert result.hits_with > 1.6 * result.hits_without


def test_a_person_spread_over_batches_costs_no_more_than_claimed(
    stored: Components, record_property: Callable[[str, object], None]
) -> None:
    # Fixed by the uploads, whatever the store kept of them: 15 of the 3 * BOUND contacts the
    # person uploaded. If all 18 are counted (a ratio of e**3), this threshold gives the
    # highest bound at 1000 trials: above 1.46 at the 1e-7 quantiles of both binomials.
    threshold = _threshold(stored, "audit-spread-without") + 15
    result = audit(
        "exchange, person spread over three batches",
        release_with=_exchange_release(stored, "audit-spread-with"),
        release_without=_exchange_release(stored, "audit-spread-without"),
        threshold=threshold,
        trials=EXCHANGE_TRIALS,
        claimed_epsilon=CLAIMED_EPSILON,
    )
    _report(result, record_property)
    assert not result.violated, result.summary()


@pytest.mark.parametrize(
    ("mechanism", "broken"),
    [
        pytest.param(exact, False, id="exact"),
        pytest.param(halved_sensitivity, True, id="halved-sensitivity"),
        pytest.param(third_of_the_scale, True, id="third-of-the-scale"),
    ],
)
def test_the_audit_flags_a_mechanism_with_too_little_noise(
    stored: Components,
    record_property: Callable[[str, object], None],
    mechanism: Mechanism,
    broken: bool,
) -> None:
    result = audit(
        f"engine pipeline, {mechanism.__name__.replace('_', ' ')}",
        release_with=_engine_release(stored, "audit-single-with", mechanism),
        release_without=_engine_release(stored, "audit-single-without", mechanism),
        threshold=_threshold(stored, "audit-single-with"),
        trials=ENGINE_TRIALS,
        claimed_epsilon=CLAIMED_EPSILON,
    )
    _report(result, record_property)
    assert result.violated is broken, result.summary()
