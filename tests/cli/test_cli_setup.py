"""dpx demo-data: what it stored, in words an operator understands."""

from __future__ import annotations

import re

from service.config import Settings
from tests.cli.test_cli_tokens import dpx


def test_demo_data_explains_the_contacts_the_person_bound_dropped(settings: Settings) -> None:
    result = dpx(settings, "demo-data", "--dataset", "uk-helpline-2024", "--contacts", "2000")

    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert re.fullmatch(
        r"stored synthetic batch \S+ in uk-helpline-2024: \d+ contacts, \d+ cells; "
        r"\d+ contacts dropped by the person bound \(a person's contacts beyond "
        r"max_contacts_per_person = 10, the bound the privacy guarantee relies on\)",
        line,
    ), line
