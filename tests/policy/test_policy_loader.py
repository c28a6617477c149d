"""Loading policy directories: the demo set, every kind of broken file, and all-or-nothing."""

from __future__ import annotations

import tempfile
from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.policy import PolicyError, PolicySetError, load_policies
from service.policy.amounts import amount_text
from tests.dataset_policies import DEMO_POLICIES

ALPHA = """\
id: alpha
title: Alpha contacts (synthetic demo data)
owner: alpha-owner
privacy:
  definition: pure
  unit: person
  max_contacts_per_person: 5
  global_budget: {epsilon: 4.0}
dimensions:
  month: {type: month, from: 2024-01, to: 2024-03}
  channel: {values: [phone, chat]}
measures:
  minutes: {min: 0, max: 60}
"""

BETA = """\
id: beta
title: Beta contacts (synthetic demo data)
owner: beta-owner
privacy:
  definition: zcdp
  unit: person
  max_contacts_per_person: 4
  max_contacts_per_cell: 2
  delta: 1e-7
  global_budget: {rho: 1.0}
dimensions:
  country: {values: [NL, BE]}
"""

ACME = """\
id: acme
name: Acme research
jurisdiction: NO
grants:
  - dataset: alpha
    budget: {epsilon: 1.0}
    max_per_query: {epsilon: 0.5}
    statistics: [count, sum]
    dimensions: [month, channel]
    expires: 2027-06-30
  - dataset: beta
    budget: {rho: 0.5}
    statistics: [count]
    dimensions: [country]
"""

MINIMAL_SET = {
    "datasets/alpha.yaml": ALPHA,
    "datasets/beta.yaml": BETA,
    "partners/acme.yaml": ACME,
}


def write_set(directory: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


def broken_set(directory: Path, file: str, old: str, new: str) -> Path:
    """The minimal set with ``old`` replaced by ``new`` once in ``file`` (all of it if old='')."""
    files = dict(MINIMAL_SET)
    if old:
        assert files[file].count(old) == 1, f"{old!r} must occur once in {file}"
        files[file] = files[file].replace(old, new)
    else:
        files[file] = new
    return write_set(directory, files)


def refusal(directory: Path) -> list[str]:
    with pytest.raises(PolicySetError) as caught:
        load_policies(directory)
    return [str(error) for error in caught.value.errors]


A, B, P = "datasets/alpha.yaml", "datasets/beta.yaml", "partners/acme.yaml"

BROKEN_FILES = [
    pytest.param(
        A, "owner: alpha-owner\n", "owner: alpha-owner\ncolour: red\n",
        f"{A}:colour: unknown field; expected one of: id, title, owner, privacy, dimensions, "
        "measures, synopsis",
        id="unknown-top-level-key",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilom: 4.0}",
        f"{A}:privacy.global_budget.epsilom: unknown field; expected one of: epsilon, rho",
        id="typo-in-budget-key",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilon: -4.0}",
        f"{A}:privacy.global_budget.epsilon: must be greater than 0, not -4.0",
        id="negative-budget",
    ),
    pytest.param(
        P, "{epsilon: 1.0}", "{epsilon: 0}",
        f"{P}:grants.0.budget.epsilon: must be greater than 0, not 0",
        id="zero-budget",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilon: 100000000000000000000}",
        f"{A}:privacy.global_budget.epsilon: must be at most 1,000,000,000, "
        "not 100000000000000000000",
        id="budget-beyond-the-ledger",
    ),
    pytest.param(
        P, "{epsilon: 1.0}", "{epsilon: 1e300}",
        f"{P}:grants.0.budget.epsilon: must be at most 1,000,000,000, not 1e+300",
        id="float-budget-beyond-the-ledger",
    ),
    pytest.param(
        A, "{min: 0, max: 60}", "{min: 0, max: 100000000000000000000000000}",
        f"{A}:measures.minutes.max: must be at most 2147483647, "
        "not 100000000000000000000000000",
        id="measure-bound-beyond-the-engine",
    ),
    pytest.param(
        A, "{min: 0, max: 60}", "{min: -2147483648, max: 60}",
        f"{A}:measures.minutes.min: must be at least -2147483647, not -2147483648",
        id="measure-bound-below-the-engine",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", '{epsilon: "4.0"}',
        f"{A}:privacy.global_budget.epsilon: must be a number, not a string",
        id="string-budget",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilon: true}",
        f"{A}:privacy.global_budget.epsilon: must be a number, not a boolean",
        id="boolean-budget",
    ),
    pytest.param(
        P, "{epsilon: 0.5}", "{epsilon: 0.1234567891}",
        f"{P}:grants.0.max_per_query.epsilon: must have at most 9 decimal places, "
        "not 0.1234567891",
        id="more-than-9-decimals",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilon: .nan}",
        f"{A}:privacy.global_budget.epsilon: must be a finite number, not nan",
        id="nan-budget",
    ),
    pytest.param(
        P, "{rho: 0.5}", "{rho: .inf}",
        f"{P}:grants.1.budget.rho: must be a finite number, not inf",
        id="infinite-budget",
    ),
    pytest.param(
        A, "{epsilon: 4.0}", "{epsilon: 4.0, rho: 1.0}",
        f"{A}:privacy.global_budget: must give one amount: epsilon (pure DP) or rho (zCDP), "
        "not both",
        id="budget-in-two-units",
    ),
    pytest.param(
        B, "  delta: 1e-7\n", "",
        f"{B}:privacy.delta: required for a zcdp dataset, to report epsilon beside rho",
        id="zcdp-without-delta",
    ),
    pytest.param(
        A, "  unit: person\n", "  unit: person\n  delta: 1e-7\n",
        f"{A}:privacy.delta: not allowed for a pure dataset (pure DP has delta 0)",
        id="pure-with-delta",
    ),
    pytest.param(
        B, "  delta: 1e-7\n", "  delta: 1.5\n",
        f"{B}:privacy.delta: must be less than 1, not 1.5",
        id="delta-not-below-one",
    ),
    pytest.param(
        B, "{rho: 1.0}", "{epsilon: 1.0}",
        f"{B}:privacy.global_budget: a zcdp dataset counts its budget in rho, not epsilon",
        id="epsilon-budget-on-zcdp-dataset",
    ),
    pytest.param(
        A, "definition: pure", "definition: approx",
        f"{A}:privacy.definition: must be one of pure, zcdp, not 'approx'",
        id="unknown-definition",
    ),
    pytest.param(
        A, "max_contacts_per_person: 5", "max_contacts_per_person: 0",
        f"{A}:privacy.max_contacts_per_person: must be at least 1, not 0",
        id="zero-contacts-per-person",
    ),
    pytest.param(
        A, "max_contacts_per_person: 5", "max_contacts_per_person: 5.5",
        f"{A}:privacy.max_contacts_per_person: must be a whole number, not 5.5",
        id="fractional-contacts-per-person",
    ),
    pytest.param(
        B, "max_contacts_per_cell: 2", "max_contacts_per_cell: 5",
        f"{B}:privacy.max_contacts_per_cell: must be at most max_contacts_per_person (4), not 5",
        id="cell-bound-above-person-bound",
    ),
    pytest.param(
        A, "  unit: person\n", "  unit: person\n  share_releases: yes\n",
        f"{A}:privacy.share_releases: must be true or false, not a string",
        id="share-releases-not-boolean",
    ),
    pytest.param(
        A, "owner: alpha-owner\n", "",
        f"{A}:owner: required field is missing",
        id="missing-owner",
    ),
    pytest.param(
        A, "from: 2024-01, to: 2024-03", "from: 2024-04, to: 2024-03",
        f"{A}:dimensions.month: from 2024-04 is after to 2024-03",
        id="month-from-after-to",
    ),
    pytest.param(
        A, "to: 2024-03", "to: 2024-13",
        f"{A}:dimensions.month.to: '2024-13' is not a month YYYY-MM",
        id="malformed-month",
    ),
    pytest.param(
        A, "from: 2024-01", "from: 2024-00",
        f"{A}:dimensions.month.from: '2024-00' is not a month YYYY-MM",
        id="month-zero",
    ),
    pytest.param(
        A, "{type: month, from: 2024-01, to: 2024-03}", "{type: month, from: 2024-01}",
        f"{A}:dimensions.month.to: required for a month dimension",
        id="month-without-to",
    ),
    pytest.param(
        A, "[phone, chat]", "[phone, chat, phone]",
        f"{A}:dimensions.channel.values: duplicate value 'phone'",
        id="duplicate-domain-value",
    ),
    pytest.param(
        A, "[phone, chat]", "[]",
        f"{A}:dimensions.channel.values: must list at least one value",
        id="empty-values",
    ),
    pytest.param(
        A, "{min: 0, max: 60}", "{min: 90, max: 60}",
        f"{A}:measures.minutes: min 90 is greater than max 60",
        id="measure-min-above-max",
    ),
    pytest.param(
        A, "channel: {values", "person: {values",
        f"{A}:dimensions.person: 'person' is a reserved column name (contacts, person) and "
        "cannot be a dimension",
        id="reserved-dimension-name",
    ),
    pytest.param(
        A, "channel: {values", "Channel: {values",
        f"{A}:dimensions.Channel: dimension name 'Channel' is not a lowercase identifier "
        "[a-z][a-z0-9_]*",
        id="dimension-name-not-identifier",
    ),
    pytest.param(
        A, "minutes: {min", "month: {min",
        f"{A}:measures.month: 'month' is already a dimension",
        id="measure-named-like-dimension",
    ),
    pytest.param(
        A, "id: alpha", "id: alpha2",
        f"{A}:id: must equal the file name 'alpha', not 'alpha2'",
        id="id-not-file-stem",
    ),
    pytest.param(
        P, "dataset: beta", "dataset: gamma",
        f"{P}:grants.1.dataset: unknown dataset 'gamma'; known: alpha, beta",
        id="grant-to-unknown-dataset",
    ),
    pytest.param(
        P, "{rho: 0.5}", "{epsilon: 0.5}",
        f"{P}:grants.1.budget: beta is a zcdp dataset counted in rho, not epsilon",
        id="grant-budget-unit-differs-from-dataset",
    ),
    pytest.param(
        P, "dimensions: [month, channel]", "dimensions: [month, region]",
        f"{P}:grants.0.dimensions: alpha has no dimension 'region'; it has month, channel",
        id="grant-dimension-unknown",
    ),
    pytest.param(
        P, "statistics: [count]", "statistics: [count, mean]",
        f"{P}:grants.1.statistics: 'mean' needs a measure, and beta declares none",
        id="mean-on-dataset-without-measures",
    ),
    pytest.param(
        P, "statistics: [count, sum]", "statistics: [count, median]",
        f"{P}:grants.0.statistics.1: must be one of count, sum, mean, not 'median'",
        id="unknown-statistic",
    ),
    pytest.param(
        P, "{epsilon: 0.5}", "{epsilon: 1.5}",
        f"{P}:grants.0.max_per_query: epsilon 1.5 is more than the grant's budget of 1",
        id="max-per-query-above-budget",
    ),
    pytest.param(
        P, "{epsilon: 0.5}", "{rho: 0.5}",
        f"{P}:grants.0.max_per_query: is counted in rho but the budget is counted in epsilon",
        id="max-per-query-in-other-unit",
    ),
    pytest.param(
        P, "  - dataset: beta\n",
        "  - dataset: alpha\n    budget: {epsilon: 1.0}\n    statistics: [count]\n"
        "    dimensions: [month]\n  - dataset: beta\n",
        f"{P}:grants.1.dataset: a second grant for alpha; grants.0 already grants it "
        "(one grant per dataset)",
        id="duplicate-grant",
    ),
    pytest.param(
        P, "expires: 2027-06-30", "expires: 2027-06-31",
        f"{P}: invalid YAML: day is out of range for month",
        id="impossible-expiry-date",
    ),
    pytest.param(
        A, "  unit: person\n", "  unit: [person\n",
        f"{A}: invalid YAML at line 7, column 26: expected ',' or ']', but got ':'",
        id="invalid-yaml",
    ),
    pytest.param(
        A, "  unit: person\n", "  unit: person\n  unit: person\n",
        f"{A}: invalid YAML at line 7, column 3: duplicate key 'unit'",
        id="duplicate-yaml-key",
    ),
    pytest.param(A, "", "", f"{A}: file is empty", id="empty-file"),
    pytest.param(
        B, "", "- NL\n- BE\n", f"{B}: top level must be a mapping of fields, not a list",
        id="top-level-list",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("file", "old", "new", "expected"), BROKEN_FILES)
def test_broken_policy_file_is_refused_with_file_field_and_reason(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    directory = broken_set(tmp_path, file, old, new)

    assert refusal(directory) == [expected]


def test_minimal_set_loads(tmp_path: Path) -> None:
    policies = load_policies(write_set(tmp_path, MINIMAL_SET))

    assert sorted(policies.datasets) == ["alpha", "beta"]
    assert sorted(policies.partners) == ["acme"]


def test_demo_policies_load() -> None:
    policies = load_policies(DEMO_POLICIES)

    assert sorted(policies.datasets) == ["be-helpline-2024", "nl-helpline-2024", "uk-helpline-2024"]
    assert sorted(policies.partners) == ["ie-helpline", "interpol-sg", "no-police", "research-uni"]
    assert all("(synthetic demo data)" in d.title for d in policies.datasets.values())
    assert policies.version.startswith("sha256:") and len(policies.version) == 7 + 64


def test_demo_uk_dataset_is_the_design_example() -> None:
    uk = load_policies(DEMO_POLICIES).datasets["uk-helpline-2024"]

    assert (uk.definition, uk.unit, uk.owner) == ("pure", "person", "lucy-faithfull-uk")
    assert uk.budget_unit == "epsilon"
    assert uk.global_budget == Fraction(8)
    assert uk.max_contacts_per_person == 10
    assert uk.max_contacts_per_cell is None and uk.delta is None
    assert uk.share_releases is False
    assert [d.name for d in uk.dimensions] == [
        "month",
        "country",
        "channel",
        "caller_type",
        "referral_source",
    ]
    month = uk.dimension("month")
    assert month.kind == "month"
    assert month.values == tuple(f"2024-{m:02d}" for m in range(1, 13))
    assert uk.dimension("country").values == ("GB", "IE")
    assert len(uk.dimension("caller_type").values) == 5
    assert len(uk.dimension("referral_source").values) == 6
    assert (uk.measure("minutes").lower, uk.measure("minutes").upper) == (0, 120)
    assert uk.source == "datasets/uk-helpline-2024.yaml"


def test_demo_datasets_cover_both_definitions_and_shared_releases() -> None:
    datasets = load_policies(DEMO_POLICIES).datasets
    nl, be = datasets["nl-helpline-2024"], datasets["be-helpline-2024"]

    assert (nl.definition, nl.budget_unit, nl.global_budget) == ("zcdp", "rho", Fraction(2))
    assert nl.delta == Fraction(1, 10**7)
    assert nl.max_contacts_per_cell is not None
    assert nl.dimension("country").values == ("NL", "BE")
    assert (be.definition, be.share_releases) == ("pure", True)


def test_demo_partners_read_as_design_example_with_an_expired_grant() -> None:
    partners = load_policies(DEMO_POLICIES).partners
    police = partners["no-police"]
    grant = police.grant_for("uk-helpline-2024")

    # YAML 1.1 would read the jurisdiction NO as the boolean false.
    assert police.jurisdiction == "NO"
    assert grant is not None
    assert grant.budget == Fraction(2) and grant.max_per_query == Fraction(1, 2)
    assert grant.statistics == {"count"}
    assert grant.dimensions == {"month", "channel", "referral_source"}
    assert grant.expires == date(2027, 6, 30)
    expiries = [g.expires for p in partners.values() for g in p.grants if g.expires]
    assert date(2025, 1, 31) in expiries


def test_one_bad_file_among_good_ones_refuses_the_whole_set(tmp_path: Path) -> None:
    directory = write_set(tmp_path, {**MINIMAL_SET, "datasets/gamma.yaml": "id: [\n"})

    with pytest.raises(PolicySetError) as caught:
        load_policies(directory)

    assert [error.file for error in caught.value.errors] == ["datasets/gamma.yaml"]


def test_every_error_of_the_set_is_listed_at_once(tmp_path: Path) -> None:
    files = {
        A: ALPHA.replace("{epsilon: 4.0}", "{epsilom: 4.0}").replace("[phone, chat]", "[]"),
        B: BETA.replace("  delta: 1e-7\n", ""),
        P: ACME.replace("{epsilon: 1.0}", "{epsilon: 0}").replace("dataset: beta", "dataset: x"),
    }
    directory = write_set(tmp_path, files)

    with pytest.raises(PolicySetError) as caught:
        load_policies(directory)

    expected = [
        f"{A}:privacy.global_budget.epsilom: unknown field; expected one of: epsilon, rho",
        f"{A}:dimensions.channel.values: must list at least one value",
        f"{B}:privacy.delta: required for a zcdp dataset, to report epsilon beside rho",
        f"{P}:grants.0.budget.epsilon: must be greater than 0, not 0",
    ]
    assert [str(error) for error in caught.value.errors] == expected
    assert str(caught.value) == "\n".join(expected)


def test_policy_error_names_file_field_and_reason(tmp_path: Path) -> None:
    directory = broken_set(tmp_path, A, "{epsilon: 4.0}", "{epsilon: -1}")

    with pytest.raises(PolicySetError) as caught:
        load_policies(directory)

    (error,) = caught.value.errors
    assert isinstance(error, PolicyError)
    assert (error.file, error.field, error.reason) == (
        A,
        "privacy.global_budget.epsilon",
        "must be greater than 0, not -1",
    )


@pytest.mark.parametrize("missing", ["datasets", "partners"])
def test_missing_policy_subdirectory_is_refused(tmp_path: Path, missing: str) -> None:
    files = {name: text for name, text in MINIMAL_SET.items() if not name.startswith(missing)}
    directory = write_set(tmp_path, files)

    assert refusal(directory) == [f"{missing}: directory is missing"]


def test_set_without_datasets_is_refused(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "partners").mkdir()

    assert refusal(tmp_path) == ["datasets: no dataset policies (*.yaml) found"]


def test_missing_policy_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    assert refusal(missing) == [f".: policy directory {missing} does not exist"]


def test_file_with_yml_suffix_is_not_silently_ignored(tmp_path: Path) -> None:
    directory = write_set(tmp_path, {**MINIMAL_SET, "partners/extra.yml": "id: extra\n"})

    assert refusal(directory) == ["partners/extra.yml: policy files must end in .yaml"]


def test_grants_on_a_broken_dataset_add_no_second_error(tmp_path: Path) -> None:
    directory = broken_set(tmp_path, A, "id: alpha", "id: 7")

    assert refusal(directory) == [f"{A}:id: must be a string, not a number"]


def test_budget_decimal_is_an_exact_fraction(tmp_path: Path) -> None:
    directory = broken_set(tmp_path, P, "{rho: 0.5}", "{rho: 0.1}")

    grant = load_policies(directory).partners["acme"].grant_for("beta")

    assert grant is not None
    assert grant.budget == Fraction(1, 10)
    assert sum([grant.budget] * 10) == 1


def test_delta_in_exponent_notation_is_a_number(tmp_path: Path) -> None:
    beta = load_policies(write_set(tmp_path, MINIMAL_SET)).datasets["beta"]

    assert beta.delta == Fraction(1, 10**7)


@given(nanos=st.integers(min_value=1, max_value=10**12))
def test_any_budget_with_at_most_9_decimals_loads_exactly(nanos: int) -> None:
    amount = Fraction(nanos, 10**9)
    partner = ACME.replace("{epsilon: 1.0}", f"{{epsilon: {amount_text(amount)}}}")
    partner = partner.replace("{epsilon: 0.5}", f"{{epsilon: {amount_text(amount)}}}")
    # hypothesis forbids function-scoped fixtures, so each example gets its own directory.
    with tempfile.TemporaryDirectory() as scratch:
        directory = write_set(Path(scratch), {**MINIMAL_SET, P: partner})
        grant = load_policies(directory).partners["acme"].grant_for("alpha")

    assert grant is not None and grant.budget == amount


def test_version_identifies_file_contents(tmp_path: Path) -> None:
    first = load_policies(write_set(tmp_path / "a", MINIMAL_SET)).version
    same = load_policies(write_set(tmp_path / "b", MINIMAL_SET)).version
    changed_files = {**MINIMAL_SET, P: ACME.replace("{epsilon: 1.0}", "{epsilon: 1.5}")}
    changed = load_policies(write_set(tmp_path / "c", changed_files)).version
    comment_only = load_policies(
        write_set(tmp_path / "d", {**MINIMAL_SET, P: "# reviewed\n" + ACME})
    ).version

    assert first == same
    assert changed != first
    assert comment_only != first
