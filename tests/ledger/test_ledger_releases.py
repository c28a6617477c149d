"""The release store: one release per question and partner, pending until it is finished."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from service.database.engine import Database
from service.database.migrate import upgrade
from service.database.schema import releases
from service.ledger.releases import DONE, PENDING, ReleaseConflict, ReleaseStore
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def store(database_url: str) -> Iterator[ReleaseStore]:
    database = Database(database_url)
    upgrade(database)
    yield ReleaseStore(database)
    database.dispose()


def pending(
    store: ReleaseStore,
    release_id: str,
    *,
    partner: str = "a",
    key: str = "q1",
    idempotency_key: str | None = None,
) -> None:
    with store.database.write() as conn:
        store.insert_pending(
            conn,
            release_id=release_id,
            dataset="uk",
            partner=partner,
            query_key=key,
            request_hash="h-" + release_id,
            idempotency_key=idempotency_key,
            policy_version="v1",
        )


def finish(store: ReleaseStore, release_id: str) -> None:
    with store.database.write() as conn:
        store.complete(conn, release_id, {"release_id": release_id, "rows": []}, "{}")


def test_the_same_question_of_the_same_partner_cannot_be_released_twice(
    store: ReleaseStore,
) -> None:
    pending(store, "rel_1")

    with pytest.raises(ReleaseConflict):
        pending(store, "rel_2")
    pending(store, "rel_3", partner="b")

    assert store.find(dataset="uk", query_key="q1", partner="a").release_id == "rel_1"
    assert store.find(dataset="uk", query_key="q1", partner="b").release_id == "rel_3"


def test_an_idempotency_key_names_one_request_per_partner(store: ReleaseStore) -> None:
    pending(store, "rel_1", idempotency_key="k")

    with pytest.raises(ReleaseConflict):
        pending(store, "rel_2", key="q2", idempotency_key="k")
    pending(store, "rel_3", partner="b", idempotency_key="k")

    assert store.find_idempotent("a", "k").release_id == "rel_1"
    assert store.find_idempotent("a", "other") is None


def test_a_finished_release_is_found_listed_and_never_discarded(store: ReleaseStore) -> None:
    pending(store, "rel_1")
    finish(store, "rel_1")
    pending(store, "rel_2", key="q2")

    with store.database.write() as conn:
        discarded_done = store.discard_pending(conn, "rel_1")
        discarded_pending = store.discard_pending(conn, "rel_2")

    found = store.get("rel_1")
    assert found is not None and found.status == DONE
    assert found.document == {"release_id": "rel_1", "rows": []}
    assert not discarded_done and discarded_pending
    assert store.get("rel_2") is None
    assert [r.release_id for r in store.list(partners=["a"])] == ["rel_1"]
    assert store.list(partners=["b"]) == []


def test_only_an_old_pending_release_is_stale(store: ReleaseStore) -> None:
    pending(store, "rel_1")
    fresh = store.get("rel_1")
    with store.database.write() as conn:
        conn.execute(
            update(releases)
            .where(releases.c.id == "rel_1")
            .values(created_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    old = store.get("rel_1")

    assert fresh is not None and old is not None and old.status == PENDING
    assert not fresh.is_stale(timedelta(seconds=60))
    assert old.is_stale(timedelta(seconds=60))
