"""Fixtures of the DP engine tests: dataset policies from the real policy model types."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest

from service.policy.model import DatasetPolicy
from tests.dataset_policies import demo_dataset


@pytest.fixture
def make_dataset() -> Callable[..., DatasetPolicy]:
    """A factory: the demo UK dataset (pure DP, C = 10), with any field replaced."""
    return demo_dataset


@pytest.fixture
def pure_dataset() -> DatasetPolicy:
    return demo_dataset()


@pytest.fixture
def zcdp_dataset() -> DatasetPolicy:
    return demo_dataset(
        id="ie-helpline-2024",
        definition="zcdp",
        delta=Fraction(1, 10**7),
        global_budget=Fraction(1),
        max_contacts_per_cell=4,
    )
