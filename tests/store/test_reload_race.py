"""A reload and an upload under the previous bounds serialise through the database.

After a reload (or a start of another instance) narrows a dataset's bounds, a worker still
holding the previous set may be finishing an upload truncated under the wider ones. Whichever
commits first, the other sees it: an upload committing after the narrower set is refused with
a retryable 409 and stores nothing; a narrower set whose check runs after the upload committed
is refused. Two real instances over one SQLite or PostgreSQL database, in both orders.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from service.app import create_app
from service.auth.registry import Principal
from service.cli import main
from service.components import Components
from service.config import Settings
from service.database.schema import batches, dataset_bounds
from service.policy.errors import PolicySetError
from service.policy.reload import ReloadOutcome, reload_policies
from service.store.errors import BoundsChanged
from service.store.ingest import parse_batch
from tests.conftest import BOTH_BACKENDS, bearer
from tests.live_server import serve, settings_variables

pytestmark = BOTH_BACKENDS

DATASET = "uk-helpline-2024"
CELLS = (
    "month,country,channel,caller_type,referral_source,contacts,minutes\n"
    "2024-01,GB,chat,self_concerned,police_warning,3,40\n"
)
WIDE = "max_contacts_per_person: 10"
NARROW = "max_contacts_per_person: 4"


@pytest.fixture
def instance_a(settings: Settings) -> Iterator[Components]:
    """An instance (or an old worker) that loaded the policies before they were narrowed."""
    built = Components.open(settings)
    yield built
    built.database.dispose()


@pytest.fixture
def instance_b(settings: Settings) -> Iterator[Components]:
    built = Components.open(settings)
    yield built
    built.database.dispose()


def narrow(policy_dir: Path) -> None:
    path = policy_dir / "datasets" / f"{DATASET}.yaml"
    text = path.read_text()
    assert WIDE in text
    path.write_text(text.replace(WIDE, NARROW))


def reload(instance: Components) -> ReloadOutcome:
    return reload_policies(
        instance.exchange, instance.settings.policy_dir, instance.ledger.all_spent()
    )


def stored_batches(instance: Components) -> int:
    with instance.database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(batches)).scalar_one())


def store(instance: Components) -> None:
    dataset = instance.exchange.policies.datasets[DATASET]
    parsed = parse_batch(CELLS.encode(), content_type="text/csv", form="cells", dataset=dataset)
    instance.store.add(dataset, parsed, form="cells", actor="test")


def test_an_upload_truncated_under_the_old_bounds_is_refused_after_a_reload_narrowed_them(
    settings: Settings, instance_a: Components, instance_b: Components
) -> None:
    old = instance_a.exchange.policies.datasets[DATASET]
    parsed = parse_batch(CELLS.encode(), content_type="text/csv", form="cells", dataset=old)
    narrow(settings.policy_dir)
    assert reload(instance_b).accepted
    with pytest.raises(BoundsChanged, match="send it again"):
        instance_a.store.add(old, parsed, form="cells", actor="test")
    assert stored_batches(instance_a) == 0
    assert not [e for e in instance_a.audit.entries() if e.action == "batch.upload"]
    # Sent again to a process holding the set in force, it is stored under the new bounds.
    store(instance_b)
    with instance_b.database.read() as conn:
        recorded = conn.execute(select(batches.c.bounds)).scalar_one()
    assert '"max_contacts_per_person":4' in recorded
    assert instance_b.audit.verify().ok


def test_over_http_the_refused_upload_is_a_retryable_409_that_stores_nothing(
    settings: Settings, instance_b: Components
) -> None:
    app = create_app(settings)
    try:
        owner = bearer(app.extensions["dpx.tokens"].issue("owner", DATASET).token)
        narrow(settings.policy_dir)
        assert reload(instance_b).accepted
        response = app.test_client().post(
            f"/v1/datasets/{DATASET}/batches?form=cells",
            data=CELLS.encode(),
            headers={**owner, "Content-Type": "text/csv"},
        )
        assert response.status_code == 409
        assert response.mimetype == "application/problem+json"
        assert "not the ones this upload was truncated" in response.json["detail"]
        assert stored_batches(instance_b) == 0
    finally:
        app.extensions["dpx.database"].dispose()


def test_a_reload_is_refused_when_an_upload_under_the_wider_bounds_committed_first(
    settings: Settings, instance_a: Components, instance_b: Components
) -> None:
    before = instance_b.exchange.policies.version
    store(instance_a)
    narrow(settings.policy_dir)
    outcome = reload(instance_b)
    assert not outcome.accepted
    assert any("privacy.max_contacts_per_person" in defect for defect in outcome.defects)
    assert instance_b.exchange.policies.version == before
    actions = [e.action for e in instance_b.audit.entries()]
    assert "policy.reload" not in actions
    assert "policy.reload_refused" in actions
    # The wider bounds stay in force: the instance that stored keeps storing.
    store(instance_a)
    assert stored_batches(instance_a) == 2


def test_a_start_with_narrower_policies_refuses_uploads_of_instances_on_the_old_set(
    settings: Settings, instance_a: Components
) -> None:
    narrow(settings.policy_dir)
    started = Components.open(settings)
    try:
        with pytest.raises(BoundsChanged):
            store(instance_a)
        store(started)
        assert stored_batches(started) == 1
        # Until it reloads, the instance on the old set keeps being refused.
        with pytest.raises(BoundsChanged):
            store(instance_a)
        assert reload(instance_a).accepted
        store(instance_a)
        assert stored_batches(instance_a) == 2
    finally:
        started.database.dispose()


def test_a_start_whose_check_follows_a_committed_upload_is_refused(
    settings: Settings, instance_a: Components
) -> None:
    store(instance_a)
    narrow(settings.policy_dir)
    with pytest.raises(PolicySetError, match="privacy.max_contacts_per_person"):
        Components.open(settings)


def test_a_database_without_a_record_of_the_bounds_in_force_takes_the_first_uploads(
    settings: Settings, instance_a: Components
) -> None:
    # A database upgraded while no process was running has no record yet.
    with instance_a.database.write() as conn:
        conn.execute(dataset_bounds.delete())
    store(instance_a)
    with instance_a.database.read() as conn:
        in_force = conn.execute(
            select(dataset_bounds.c.bounds).where(dataset_bounds.c.dataset == DATASET)
        ).scalar_one()
    assert '"max_contacts_per_person":10' in in_force


def test_a_command_run_with_narrowed_files_before_the_reload_leaves_the_service_alone(
    settings: Settings, instance_a: Components
) -> None:
    narrow(settings.policy_dir)
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    result = CliRunner().invoke(
        main, ["demo-data", "--dataset", DATASET, "--contacts", "50"], env=env
    )
    assert result.exit_code == 1
    assert "not the ones this upload was truncated" in result.stderr
    assert "Traceback" not in result.output
    assert stored_batches(instance_a) == 0
    # The service's set is still the one in force: its uploads are stored.
    store(instance_a)
    assert stored_batches(instance_a) == 1


def test_a_query_planned_under_narrower_bounds_than_those_in_force_is_refused_uncharged(
    settings: Settings, instance_a: Components, instance_b: Components
) -> None:
    # A raised bound is allowed; data stored under it needs the raised sensitivity, which
    # an instance still on the old set would not apply.
    path = settings.policy_dir / "datasets" / f"{DATASET}.yaml"
    path.write_text(path.read_text().replace(WIDE, "max_contacts_per_person: 12"))
    assert reload(instance_b).accepted
    store(instance_b)
    partner = Principal(token_id="test", role="partner", subject="no-police")
    query = {"dataset": DATASET, "statistic": "count", "epsilon": 0.1}
    with pytest.raises(BoundsChanged):
        instance_a.exchange.run(partner, query)
    assert instance_a.ledger.all_spent() == {}
    assert not [e for e in instance_a.audit.entries() if e.action == "release.create"]
    # Once reloaded, the instance answers under the bounds in force.
    assert reload(instance_a).accepted
    answer = instance_a.exchange.run(partner, query)
    assert answer.document["policy_version"] == instance_b.exchange.policies.version


def test_a_synopsis_build_under_narrower_bounds_than_those_in_force_is_refused_uncharged(
    settings: Settings,
) -> None:
    path = settings.policy_dir / "datasets" / f"{DATASET}.yaml"
    path.write_text(
        path.read_text()
        + "synopsis:\n  marginals:\n    - [month, channel]\n  budget: {epsilon: 0.5}\n"
    )
    instance_a, instance_b = Components.open(settings), Components.open(settings)
    try:
        path.write_text(path.read_text().replace(WIDE, "max_contacts_per_person: 12"))
        assert reload(instance_b).accepted
        store(instance_b)
        with pytest.raises(BoundsChanged):
            instance_a.synopses.build(DATASET, actor="admin:test")
        assert instance_a.ledger.all_spent() == {}
        instance_b.synopses.build(DATASET, actor="admin:test")
        assert instance_b.ledger.all_spent() != {}
    finally:
        instance_a.database.dispose()
        instance_b.database.dispose()


@pytest.mark.slow
def test_gunicorn_workers_on_the_old_set_refuse_uploads_until_the_master_reloads(
    settings: Settings,
) -> None:
    served = Components.open(settings)
    owner = bearer(served.tokens.issue("owner", DATASET).token)
    served.database.dispose()

    def upload(url: str) -> requests.Response:
        return requests.post(
            f"{url}/v1/datasets/{DATASET}/batches?form=cells",
            data=CELLS.encode(),
            headers={**owner, "Content-Type": "text/csv"},
            timeout=30,
        )

    with serve(
        settings_variables(settings), workers=2, log_path=settings.data_dir / "gunicorn.log"
    ) as server:
        # Another instance starts with narrower policies while these workers hold the old.
        narrow(settings.policy_dir)
        other = Components.open(settings)
        try:
            for _ in range(4):
                response = upload(server.url)
                assert response.status_code == 409
                assert response.headers["Content-Type"].startswith("application/problem+json")
            assert stored_batches(other) == 0
            server.hang_up()
            server.wait_for_log("policies reloaded")
            server.wait_for_log("Booting worker", times=4)
            assert upload(server.url).status_code == 201
            assert stored_batches(other) == 1
        finally:
            other.database.dispose()
