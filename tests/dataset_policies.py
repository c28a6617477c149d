"""The tests' policies: their own copy of the demo policy files, and dataset policies built
from the real policy model types.

``DEMO_POLICIES`` (``tests/demo_policies``) is a snapshot of the demo set in ``policies/`` that
belongs to the tests. The working tree's ``policies/`` is the operator's to edit, as README
suggests, so no test reads it: a DPO's change there never changes what a test sees.

``demo_dataset`` is the demo UK helpline dataset of that copy; ``month_channel_dataset`` is the
same dataset cut down to two dimensions. Each takes any field to replace as a keyword.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from service.policy.model import DatasetPolicy, Dimension, Measure

DEMO_POLICIES = Path(__file__).resolve().parent / "demo_policies"
"""The tests' copy of the demo policy set (datasets/ and partners/)."""

MONTHS = tuple(f"2024-{month:02d}" for month in range(1, 13))
CHANNELS = ("phone", "chat", "email", "web")


def demo_dataset(**changes: Any) -> DatasetPolicy:
    """The demo UK dataset (pure DP, C = 10, minutes 0..120), with any field replaced."""
    base = DatasetPolicy(
        id="uk-helpline-2024",
        title="Stop It Now UK contacts, 2024 (synthetic demo data)",
        owner="lucy-faithfull-uk",
        definition="pure",
        unit="person",
        max_contacts_per_person=10,
        max_contacts_per_cell=None,
        delta=None,
        global_budget=Fraction(8),
        share_releases=False,
        dimensions=(
            Dimension("month", "month", MONTHS),
            Dimension("country", "categorical", ("GB", "IE")),
            Dimension("channel", "categorical", CHANNELS),
            Dimension(
                "caller_type",
                "categorical",
                ("self_concerned", "family_friend", "professional", "survivor", "other"),
            ),
            Dimension(
                "referral_source",
                "categorical",
                (
                    "social_media_ad",
                    "police_warning",
                    "search_warning",
                    "professional",
                    "word_of_mouth",
                    "other",
                ),
            ),
        ),
        measures=(Measure("minutes", 0, 120),),
        source="policies/datasets/uk-helpline-2024.yaml",
    )
    return replace(base, **changes)


def month_channel_dataset(months: tuple[str, ...], **changes: Any) -> DatasetPolicy:
    """The demo UK dataset with only the dimensions month (over ``months``) and channel,
    with any field replaced."""
    reduced = demo_dataset(
        title="test dataset (synthetic)",
        dimensions=(
            Dimension("month", "month", months),
            Dimension("channel", "categorical", CHANNELS),
        ),
        source="tests",
    )
    return replace(reduced, **changes)
