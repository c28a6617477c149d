"""Policies may not shrink a bound below what stored batches were stored under, nor change
the privacy definition of a dataset whose budgets were charged.

Every batch records the bounds it was truncated and clamped to. A policy set that lowers a
contribution bound, narrows a measure or drops dimension values under stored data is refused
by ``dpx check-policies``, at start and at reload (SIGHUP to gunicorn), naming file and
field; the last good set stays in force. Raising bounds stays allowed. Budgets hold bare
amounts, so rho already charged must never be read as epsilon (or the reverse): a set that
relabels a charged dataset is refused the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from service.app import create_app
from service.auth.registry import Principal
from service.cli import main
from service.components import Components
from service.config import Settings
from service.database.schema import dataset_bounds
from service.policy.errors import PolicySetError
from service.policy.loader import load_policies
from service.policy.reload import reload_policies
from service.store.bounds import stored_data_defects
from service.store.errors import BoundsChanged
from service.store.ingest import parse_batch
from tests.conftest import BOTH_BACKENDS
from tests.live_server import ROOT, deploy, serve, settings_variables

DATASET = "uk-helpline-2024"
SOURCE = f"datasets/{DATASET}.yaml"
CELLS = (
    "month,country,channel,caller_type,referral_source,contacts,minutes\n"
    "2024-01,GB,chat,self_concerned,police_warning,3,40\n"
)

# (change to the dataset's YAML, the field the refusal names)
SHRINKING = [
    (
        ("max_contacts_per_person: 10", "max_contacts_per_person: 9"),
        "privacy.max_contacts_per_person",
    ),
    (
        ("max_contacts_per_person: 10", "max_contacts_per_person: 10\n  max_contacts_per_cell: 5"),
        "privacy.max_contacts_per_cell",
    ),
    (("minutes: {min: 0, max: 120}", "minutes: {min: 0, max: 90}"), "measures.minutes.max"),
    (("minutes: {min: 0, max: 120}", "minutes: {min: 5, max: 120}"), "measures.minutes.min"),
    (("[phone, chat, email, web]", "[phone, chat, email]"), "dimensions.channel.values"),
    (("to: 2024-12", "to: 2024-11"), "dimensions.month"),
]
RAISING = [
    ("max_contacts_per_person: 10", "max_contacts_per_person: 12"),
    ("minutes: {min: 0, max: 120}", "minutes: {min: -5, max: 240}"),
    ("[phone, chat, email, web]", "[phone, chat, email, web, sms]"),
]


def store_a_batch(settings: Settings) -> None:
    components = Components.open(settings)
    try:
        dataset = components.exchange.policies.datasets[DATASET]
        batch = parse_batch(CELLS.encode(), content_type="text/csv", form="cells", dataset=dataset)
        components.store.add(dataset, batch, form="cells", actor="test")
    finally:
        components.database.dispose()


def edit(policy_dir: Path, old: str, new: str) -> None:
    path = policy_dir / SOURCE
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def dpx(settings: Settings, *args: str) -> Result:
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    return CliRunner().invoke(main, list(args), env=env)


def check_policies(settings: Settings) -> Result:
    return dpx(settings, "check-policies")


@BOTH_BACKENDS
@pytest.mark.parametrize(("change", "field"), SHRINKING)
def test_a_bound_shrunk_under_stored_data_is_refused_by_check_start_and_reload(
    settings: Settings, change: tuple[str, str], field: str
) -> None:
    store_a_batch(settings)
    service = Components.open(settings)
    try:
        edit(settings.policy_dir, *change)
        proposed = load_policies(settings.policy_dir)
        [defect] = stored_data_defects(service.database, proposed)
        assert (defect.file, defect.field) == (SOURCE, field)

        result = check_policies(settings)
        assert result.exit_code == 1
        assert f"{SOURCE}:{field}: " in result.stderr

        before = service.exchange.policies.version
        assert not reload_policies(
            service.exchange, settings.policy_dir, service.ledger.all_spent()
        ).accepted
        assert service.exchange.policies.version == before
        assert not [e for e in service.audit.entries() if e.action == "policy.reload"]

        with pytest.raises(PolicySetError, match=f"{SOURCE}:{field}: "):
            create_app(settings)
    finally:
        service.database.dispose()


@BOTH_BACKENDS
@pytest.mark.parametrize("change", RAISING)
def test_raising_a_bound_or_widening_a_domain_stays_allowed(
    settings: Settings, change: tuple[str, str]
) -> None:
    store_a_batch(settings)
    service = Components.open(settings)
    try:
        edit(settings.policy_dir, *change)
        assert check_policies(settings).exit_code == 0
        assert reload_policies(
            service.exchange, settings.policy_dir, service.ledger.all_spent()
        ).accepted
        # Once data is stored under the raised bound, going back is a shrink.
        store_a_batch(settings)
        edit(settings.policy_dir, change[1], change[0])
        assert check_policies(settings).exit_code == 1
    finally:
        service.database.dispose()


def test_without_stored_data_any_bound_may_change(settings: Settings) -> None:
    edit(settings.policy_dir, "max_contacts_per_person: 10", "max_contacts_per_person: 2")
    assert check_policies(settings).exit_code == 0
    create_app(settings).extensions["dpx.database"].dispose()


def test_a_cli_command_refuses_to_start_on_a_shrunk_bound(settings: Settings) -> None:
    store_a_batch(settings)
    edit(settings.policy_dir, "max_contacts_per_person: 10", "max_contacts_per_person: 3")
    result = dpx(settings, "budget-report")
    assert result.exit_code == 1
    assert (
        f"policies refused: {SOURCE}:privacy.max_contacts_per_person: must stay at least 10"
        in result.stderr
    )


@pytest.mark.slow
def test_sighup_refuses_a_lowered_bound_and_keeps_serving_the_last_good_set(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    settings = deploy(tmp_path, policies)
    store_a_batch(settings)
    components = Components.open(settings)
    headers = {"Authorization": "Bearer " + components.tokens.issue("dpo", None).token}
    with serve(
        settings_variables(settings), workers=2, log_path=settings.data_dir / "gunicorn.log"
    ) as server:
        edit(policies, "max_contacts_per_person: 10", "max_contacts_per_person: 4")
        server.hang_up()
        server.wait_for_log("policy reload refused")
        server.wait_for_log("Booting worker", times=4)
        errors = [
            json.loads(line)["message"]
            for line in server.log_text().splitlines()
            if '"level": "ERROR"' in line
        ]
        assert any(m.startswith(f"{SOURCE}:privacy.max_contacts_per_person: ") for m in errors)
        for _ in range(6):
            response = requests.get(
                server.url + f"/v1/datasets/{DATASET}", headers=headers, timeout=30
            )
            assert response.json()["privacy"]["max_contacts_per_person"] == 10
        assert server.process.poll() is None
    components.database.dispose()


ZCDP = "nl-helpline-2024"  # the one zCDP dataset of the demo policies: only its budgets are rho
ZCDP_SOURCE = f"datasets/{ZCDP}.yaml"
ZCDP_QUERY = {"dataset": ZCDP, "statistic": "count", "group_by": ["month"], "rho": 0.1}
PARTNER = Principal(token_id="test", role="partner", subject="interpol-sg")


def relabel_pure(policy_dir: Path) -> None:
    """Declare the zCDP dataset pure DP, its budgets and grants in epsilon."""
    path = policy_dir / ZCDP_SOURCE
    text = path.read_text().replace("definition: zcdp", "definition: pure")
    path.write_text(text.replace("  delta: 1e-7\n", "").replace("rho:", "epsilon:"))
    for partner in (policy_dir / "partners").glob("*.yaml"):
        partner.write_text(partner.read_text().replace("rho:", "epsilon:"))


@BOTH_BACKENDS
def test_a_definition_changed_after_charges_is_refused_by_check_start_and_reload(
    settings: Settings,
) -> None:
    service = Components.open(settings)
    try:
        service.exchange.run(PARTNER, ZCDP_QUERY)
        spent = service.ledger.all_spent()
        relabel_pure(settings.policy_dir)
        proposed = load_policies(settings.policy_dir)
        [defect] = stored_data_defects(service.database, proposed)
        assert (defect.file, defect.field) == (ZCDP_SOURCE, "privacy.definition")
        assert "cannot change from zcdp to pure" in defect.reason

        result = check_policies(settings)
        assert result.exit_code == 1
        assert f"{ZCDP_SOURCE}:privacy.definition: " in result.stderr

        before = service.exchange.policies.version
        assert not reload_policies(service.exchange, settings.policy_dir, spent).accepted
        assert service.exchange.policies.version == before
        # The rho spent is still rho: a pure-DP question cannot be bought on top of it.
        with pytest.raises(PolicySetError, match=f"{ZCDP_SOURCE}:privacy.definition: "):
            create_app(settings)
        assert service.ledger.all_spent() == spent
    finally:
        service.database.dispose()


@BOTH_BACKENDS
def test_a_synopsis_build_alone_pins_the_definition(settings: Settings) -> None:
    service = Components.open(settings)
    try:
        service.synopses.build(ZCDP, actor="admin:test")
        relabel_pure(settings.policy_dir)
        [defect] = stored_data_defects(service.database, load_policies(settings.policy_dir))
        assert (defect.file, defect.field) == (ZCDP_SOURCE, "privacy.definition")
    finally:
        service.database.dispose()


@BOTH_BACKENDS
def test_an_in_force_record_of_an_older_version_still_guards_the_definition(
    settings: Settings,
) -> None:
    """A record of the bounds in force written before it named the definition: the charges
    themselves still tell which definition the budgets were spent in."""
    service = Components.open(settings)
    try:
        service.exchange.run(PARTNER, ZCDP_QUERY)
        with service.database.write() as conn:
            recorded = conn.execute(
                select(dataset_bounds.c.bounds).where(dataset_bounds.c.dataset == ZCDP)
            ).scalar_one()
            older = {k: v for k, v in json.loads(recorded).items() if k != "definition"}
            conn.execute(
                update(dataset_bounds)
                .where(dataset_bounds.c.dataset == ZCDP)
                .values(bounds=json.dumps(older, sort_keys=True))
            )
        relabel_pure(settings.policy_dir)
        [defect] = stored_data_defects(service.database, load_policies(settings.policy_dir))
        assert (defect.file, defect.field) == (ZCDP_SOURCE, "privacy.definition")
        assert "cannot change from zcdp to pure" in defect.reason
    finally:
        service.database.dispose()


def test_without_charges_the_definition_may_change(settings: Settings) -> None:
    relabel_pure(settings.policy_dir)
    assert check_policies(settings).exit_code == 0
    create_app(settings).extensions["dpx.database"].dispose()


@BOTH_BACKENDS
def test_a_worker_still_on_the_previous_definition_is_refused_its_charge(
    settings: Settings,
) -> None:
    old, new = Components.open(settings), Components.open(settings)
    originals = {path: path.read_text() for path in settings.policy_dir.rglob("*.yaml")}
    try:
        relabel_pure(settings.policy_dir)
        assert reload_policies(new.exchange, settings.policy_dir, {}).accepted
        with pytest.raises(BoundsChanged):
            old.exchange.run(PARTNER, ZCDP_QUERY)
        assert old.ledger.all_spent() == {}
        pure = {**ZCDP_QUERY, "epsilon": 0.1}
        del pure["rho"]
        new.exchange.run(PARTNER, pure)
        # Charged in epsilon now, the dataset cannot go back to rho either.
        for path, text in originals.items():
            path.write_text(text)
        outcome = reload_policies(new.exchange, settings.policy_dir, {})
        assert not outcome.accepted
        assert [f"{ZCDP_SOURCE}:privacy.definition: " in d for d in outcome.defects] == [True]
    finally:
        old.database.dispose()
        new.database.dispose()
