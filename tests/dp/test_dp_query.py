"""Query validation, the canonical form and the output cells of a query."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.dp.errors import InvalidQuery
from service.dp.query import (
    AccuracyTarget,
    build_query,
    canonical,
    group_cells,
    hash_request,
    merged_cells,
    query_key,
)
from service.policy.model import DatasetPolicy
from tests.dataset_policies import MONTHS, demo_dataset

DIMENSIONS = "month, country, channel, caller_type, referral_source"


def _raw(**fields: Any) -> dict[str, Any]:
    return {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.5, **fields}


def test_a_valid_query_is_normalised(pure_dataset: DatasetPolicy) -> None:
    query = build_query(
        _raw(
            group_by=["channel", "month"],
            filters={"channel": ["web", "chat"], "month": {"from": "2024-03", "to": "2024-05"}},
        ),
        pure_dataset,
    )
    assert query.group_by == ("month", "channel")
    assert query.filters == (
        ("channel", ("chat", "web")),
        ("month", ("2024-03", "2024-04", "2024-05")),
    )
    assert query.cost == Fraction(1, 2)
    assert query.accuracy is None
    assert query.alpha == 0.05
    assert query.budget_unit == "epsilon"


def test_an_accuracy_target_carries_its_alpha(zcdp_dataset: DatasetPolicy) -> None:
    raw = {
        "dataset": "ie-helpline-2024",
        "statistic": "sum",
        "measure": "minutes",
        "accuracy": {"max_error": 50, "alpha": 0.1},
    }
    query = build_query(raw, zcdp_dataset)
    assert query.cost is None
    assert query.accuracy == AccuracyTarget(max_error=50.0, alpha=0.1)
    assert query.alpha == 0.1
    assert query.budget_unit == "rho"


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    (_raw(dataset="other"), "dataset: 'other' does not match 'uk-helpline-2024'"),
    (_raw(statistic="median"), "statistic: 'median' is not one of count, sum, mean"),
    (_raw(measure="minutes"), "measure: not allowed for count; remove it"),
    (_raw(statistic="sum"), "measure: required for sum"),
    (_raw(statistic="mean"), "measure: required for mean"),
    (
        _raw(statistic="sum", measure="age"),
        "measure: 'age' is not a measure of uk-helpline-2024 (measures: minutes)",
    ),
    (
        _raw(group_by=["region"]),
        f"group_by: 'region' is not a dimension of uk-helpline-2024 ({DIMENSIONS})",
    ),
    (_raw(group_by=["month", "month"]), "group_by: 'month' is repeated"),
    (
        _raw(group_by=["month", "country", "channel", "caller_type"]),
        "group_by: at most 3 dimensions, got 4",
    ),
    (
        _raw(filters={"region": ["north"]}),
        f"filters: 'region' is not a dimension of uk-helpline-2024 ({DIMENSIONS})",
    ),
    (
        _raw(filters={"channel": ["fax"]}),
        "filters.channel: 'fax' is not one of phone, chat, email, web",
    ),
    (_raw(filters={"month": ["2025-13"]}), "filters.month: '2025-13' is not in 2024-01..2024-12"),
    (_raw(filters={"channel": []}), "filters.channel: empty list; give at least one value"),
    (
        _raw(filters={"month": {"from": "2024-00", "to": "2024-02"}}),
        "filters.month: '2024-00' is not in 2024-01..2024-12",
    ),
    (
        _raw(filters={"month": {"from": "2024-01", "to": "2024-13"}}),
        "filters.month: '2024-13' is not in 2024-01..2024-12",
    ),
    (
        _raw(filters={"month": {"from": "2023-12", "to": "2024-02"}}),
        "filters.month: '2023-12' is not in 2024-01..2024-12",
    ),
    (
        _raw(filters={"month": {"from": "2024-01", "to": "2025-01"}}),
        "filters.month: '2025-01' is not in 2024-01..2024-12",
    ),
    (
        _raw(filters={"month": {"from": "2024-05", "to": "2024-03"}}),
        "filters.month: range 2024-05..2024-03 is reversed",
    ),
    (
        _raw(filters={"month": {"from": "2024-05"}}),
        "filters.month: a range needs exactly the keys 'from' and 'to'",
    ),
    (
        _raw(filters={"channel": {"from": "chat", "to": "web"}}),
        "filters.channel: a from/to range is only allowed for month dimensions",
    ),
    (
        {"dataset": "uk-helpline-2024", "statistic": "count"},
        "epsilon: give exactly one of epsilon or accuracy (got none)",
    ),
    (
        _raw(accuracy={"max_error": 10}),
        "epsilon: give exactly one of epsilon or accuracy (got epsilon and accuracy)",
    ),
    (
        {"dataset": "uk-helpline-2024", "statistic": "count", "rho": 0.1},
        "rho: uk-helpline-2024 uses pure DP; give epsilon, not rho",
    ),
    (_raw(epsilon=0), "epsilon: 0 must be greater than 0"),
    (_raw(epsilon="0.0000001"), "epsilon: 0.0000001 is below the minimum cost 0.000001"),
    (_raw(alpha=0.7), "alpha: 0.7 is not in (0, 0.5]"),
    (_raw(alpha=0), "alpha: 0 is not in (0, 0.5]"),
    (
        {"dataset": "uk-helpline-2024", "statistic": "count", "accuracy": {"max_error": -1}},
        "accuracy.max_error: must be a finite number > 0, got -1",
    ),
    (
        {"dataset": "uk-helpline-2024", "statistic": "count", "accuracy": {"max_error": 0}},
        "accuracy.max_error: must be a finite number > 0, got 0",
    ),
    (
        {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "accuracy": {"max_error": float("inf")},
        },
        "accuracy.max_error: must be a finite number > 0, got inf",
    ),
    (
        {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "accuracy": {"max_error": 5, "alpha": 0.6},
        },
        "accuracy.alpha: 0.6 is not in (0, 0.5]",
    ),
    (
        {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "alpha": 0.1,
            "accuracy": {"max_error": 5, "alpha": 0.2},
        },
        "alpha: 0.1 differs from accuracy.alpha 0.2",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD_QUERIES)
def test_bad_queries_get_exact_messages(
    raw: dict[str, Any], message: str, pure_dataset: DatasetPolicy
) -> None:
    with pytest.raises(InvalidQuery, match=f"^{re.escape(message)}$") as caught:
        build_query(raw, pure_dataset)
    assert f"{caught.value.field}: {caught.value.reason}" == message


def test_a_zcdp_dataset_wants_rho(zcdp_dataset: DatasetPolicy) -> None:
    raw = {"dataset": "ie-helpline-2024", "statistic": "count", "epsilon": 1}
    with pytest.raises(InvalidQuery, match=r"^epsilon: ie-helpline-2024 uses zcdp DP; give rho"):
        build_query(raw, zcdp_dataset)


def test_too_many_cells_are_refused(pure_dataset: DatasetPolicy) -> None:
    raw = _raw(group_by=["month", "caller_type", "referral_source"])
    assert len(group_cells(build_query(raw, pure_dataset), pure_dataset)) == 360
    with pytest.raises(InvalidQuery, match=r"^group_by: 12 x 5 x 6 = 360 cells exceeds the limit"):
        build_query(raw, pure_dataset, max_cells=359)


def test_group_cells_is_the_full_cross_product_in_domain_order(
    pure_dataset: DatasetPolicy,
) -> None:
    query = build_query(
        _raw(group_by=["channel", "country"], filters={"channel": ["email", "phone"]}),
        pure_dataset,
    )
    assert group_cells(query, pure_dataset) == [
        ("GB", "phone"),
        ("GB", "email"),
        ("IE", "phone"),
        ("IE", "email"),
    ]
    no_group = build_query(_raw(), pure_dataset)
    assert group_cells(no_group, pure_dataset) == [()]


def test_merged_cells_counts_stored_cells_behind_one_output_cell(
    pure_dataset: DatasetPolicy,
) -> None:
    query = build_query(_raw(group_by=["month"], filters={"channel": ["chat"]}), pure_dataset)
    # country 2 x channel 1 x caller_type 5 x referral_source 6
    assert merged_cells(query, pure_dataset) == 60


def _spellings() -> st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]:
    """Two spellings of one question: shuffled keys, lists and range-vs-list months."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
        first = draw(st.integers(min_value=0, max_value=10))
        last = draw(st.integers(min_value=first, max_value=10))
        months = list(MONTHS[first : last + 1])
        channels = draw(
            st.lists(
                st.sampled_from(["phone", "chat", "email", "web"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        group_by = draw(
            st.lists(st.sampled_from(["country", "caller_type", "month"]), max_size=3, unique=True)
        )
        epsilon = draw(st.sampled_from([0.5, "0.5", "0.50", "5e-1"]))
        one = {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": group_by,
            "filters": {"month": {"from": months[0], "to": months[-1]}, "channel": channels},
            "epsilon": 0.5,
        }
        other = {
            "epsilon": epsilon,
            "filters": {
                "channel": draw(st.permutations(channels + channels[:1])),
                "month": draw(st.permutations(months)),
            },
            "group_by": draw(st.permutations(group_by)),
            "statistic": "count",
            "dataset": "uk-helpline-2024",
        }
        return one, other

    return build()


@given(_spellings())
def test_the_same_question_has_one_key(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    dataset = demo_dataset()
    one, other = (build_query(raw, dataset) for raw in pair)
    assert canonical(one) == canonical(other)
    assert query_key(one) == query_key(other)


def test_a_filter_over_the_whole_domain_is_no_filter(pure_dataset: DatasetPolicy) -> None:
    whole = build_query(_raw(filters={"country": ["IE", "GB"]}), pure_dataset)
    assert whole.filters == ()
    assert query_key(whole) == query_key(build_query(_raw(), pure_dataset))


@pytest.mark.parametrize(
    "change",
    [
        {"epsilon": 0.25},
        {"alpha": 0.1},
        {"group_by": ["month"]},
        {"filters": {"channel": ["chat"]}},
        {"statistic": "sum", "measure": "minutes"},
    ],
)
def test_a_different_question_has_a_different_key(
    change: dict[str, Any], pure_dataset: DatasetPolicy
) -> None:
    base = build_query(_raw(), pure_dataset)
    assert query_key(build_query(_raw(**change), pure_dataset)) != query_key(base)


def test_canonical_form_is_plain_json(
    make_dataset: Callable[..., DatasetPolicy], pure_dataset: DatasetPolicy
) -> None:
    query = build_query(_raw(group_by=["month"], epsilon="0.1"), pure_dataset)
    assert canonical(query) == {
        "dataset": "uk-helpline-2024",
        "statistic": "count",
        "measure": None,
        "group_by": ["month"],
        "filters": {},
        "privacy": {"epsilon": "0.1"},
        "alpha": 0.05,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", query_key(query))
    zcdp = make_dataset(definition="zcdp", delta=Fraction(1, 10**7))
    as_rho = build_query({**_raw(), "epsilon": None, "rho": "0.5"}, zcdp)
    assert canonical(as_rho)["privacy"] == {"rho": "0.5"}
    assert query_key(as_rho) != query_key(build_query(_raw(), pure_dataset))


def test_the_request_hash_of_a_body_never_changes() -> None:
    # Stored releases keep this hash beside their Idempotency-Key: if its bytes changed, a
    # retry across an upgrade would be refused as another request.
    body = {"statistic": "count", "group_by": ["month"], "epsilon": 0.3}
    assert hash_request({"dataset": "uk-helpline-2024", **body}) == (
        "866d18ec157982ddd578f50c2889dbda4c67ffe87d39628ecdcb69bfc11adf21"
    )
    # Unlike a query key, a reworded body is another request.
    reordered = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.3}
    assert hash_request({**reordered, "group_by": ["month", "channel"]}) != hash_request(
        {**reordered, "group_by": ["channel", "month"]}
    )
