"""Synthetic demo data: reproducible, inside the schema, and exercising every ingest path."""

from __future__ import annotations

from fractions import Fraction

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from service.policy.model import DatasetPolicy, Dimension, Measure
from service.store.demo import SYNTHETIC_PERSON_PREFIX, generate_contacts, police_campaign_month
from service.store.ingest import parse_batch
from tests.dataset_policies import MONTHS, demo_dataset

HELPLINE = demo_dataset(source="tests")

# A schema the helpline patterns know nothing about: no month, unknown names, two measures.
UNFAMILIAR = DatasetPolicy(
    id="other-2025",
    title="other (synthetic)",
    owner="someone",
    definition="zcdp",
    unit="person",
    max_contacts_per_person=3,
    max_contacts_per_cell=2,
    delta=Fraction(1, 10**7),
    global_budget=Fraction(1),
    share_releases=True,
    dimensions=(
        Dimension("region", "categorical", ("north", "south", "east", "west")),
        Dimension("age_band", "categorical", ("u18", "18-29", "30+")),
    ),
    measures=(Measure("sessions", 1, 5), Measure("score", -10, 10)),
    source="tests",
)


@pytest.fixture(scope="module")
def contacts() -> pl.DataFrame:
    return generate_contacts(HELPLINE, contacts=50_000, seed=7)


def test_the_same_seed_gives_the_same_records() -> None:
    first = generate_contacts(HELPLINE, contacts=2_000, seed=42)
    assert_frame_equal(first, generate_contacts(HELPLINE, contacts=2_000, seed=42))
    assert not first.equals(generate_contacts(HELPLINE, contacts=2_000, seed=43))


def test_columns_are_the_schema_and_a_synthetic_person(contacts: pl.DataFrame) -> None:
    assert contacts.columns == [
        "month",
        "country",
        "channel",
        "caller_type",
        "referral_source",
        "minutes",
        "person",
    ]
    assert contacts.height == 50_000
    assert contacts.get_column("person").str.starts_with(SYNTHETIC_PERSON_PREFIX).all()


def test_every_dimension_value_is_in_its_public_domain(contacts: pl.DataFrame) -> None:
    for dimension in HELPLINE.dimensions:
        assert contacts.get_column(dimension.name).is_in(dimension.values).all(), dimension.name


def test_records_are_in_month_order(contacts: pl.DataFrame) -> None:
    assert contacts.get_column("month").is_sorted()


def test_some_repeat_callers_exceed_the_per_person_bound(contacts: pl.DataFrame) -> None:
    per_person = contacts.group_by("person").len().get_column("len")
    assert per_person.max() > HELPLINE.max_contacts_per_person
    assert (per_person > 1).sum() > 0
    # Most people get in touch once or a few times.
    assert per_person.median() <= 2


def test_some_minutes_lie_beyond_the_bounds(contacts: pl.DataFrame) -> None:
    minutes = contacts.get_column("minutes")
    beyond = ((minutes < 0) | (minutes > 120)).sum()
    assert 0 < beyond < contacts.height * 0.02


def test_police_warning_referrals_rise_after_the_campaign_month(contacts: pl.DataFrame) -> None:
    campaign = police_campaign_month(HELPLINE)
    assert campaign == "2024-07"
    share = contacts.group_by(pl.col("month") >= campaign).agg(
        (pl.col("referral_source") == "police_warning").mean().alias("share")
    )
    before = share.filter(~pl.col("month")).get_column("share").item()
    after = share.filter(pl.col("month")).get_column("share").item()
    assert after > 2.5 * before


def test_the_first_country_dominates_and_most_callers_are_self_concerned(
    contacts: pl.DataFrame,
) -> None:
    assert (contacts.get_column("country") == "GB").mean() > 0.6
    top_caller_type = contacts.get_column("caller_type").mode().to_list()
    assert top_caller_type == ["self_concerned"]


def test_every_channel_and_month_occurs(contacts: pl.DataFrame) -> None:
    assert set(contacts.get_column("channel")) == {"phone", "chat", "email", "web"}
    assert set(contacts.get_column("month")) == set(MONTHS)


def test_demo_records_ingest_with_truncation_and_clamping(contacts: pl.DataFrame) -> None:
    result = parse_batch(
        contacts.write_csv().encode(), content_type="text/csv", form="contacts", dataset=HELPLINE
    )
    assert result.rows == contacts.height
    assert result.truncated > 0
    assert result.clamped > 0
    assert result.persons == contacts.get_column("person").n_unique()
    assert result.contacts == contacts.height - result.truncated


def test_any_policy_gets_usable_demo_data() -> None:
    records = generate_contacts(UNFAMILIAR, contacts=5_000, seed=1)
    assert records.columns == ["region", "age_band", "sessions", "score", "person"]
    assert police_campaign_month(UNFAMILIAR) is None
    # Unknown dimensions are skewed towards their first values.
    regions = records.get_column("region").value_counts(sort=True).get_column("region")
    assert regions[0] == "north"
    result = parse_batch(
        records.write_csv().encode(), content_type="text/csv", form="contacts", dataset=UNFAMILIAR
    )
    assert result.truncated > 0
    assert result.clamped > 0


def test_no_contacts_gives_an_empty_frame_with_the_columns() -> None:
    records = generate_contacts(HELPLINE, contacts=0, seed=1)
    assert records.height == 0
    assert records.columns[-1] == "person"


def test_a_negative_number_of_contacts_is_refused() -> None:
    with pytest.raises(ValueError, match="contacts must be non-negative, got -1"):
        generate_contacts(HELPLINE, contacts=-1, seed=1)


@pytest.mark.slow
def test_a_million_demo_contacts_are_generated_whole() -> None:
    # Speed is measured by scripts/bench ingest; here, the scale `dpx demo-data` promises.
    records = generate_contacts(HELPLINE, contacts=1_000_000, seed=3)
    assert records.height == 1_000_000
    assert records["person"].null_count() == 0
