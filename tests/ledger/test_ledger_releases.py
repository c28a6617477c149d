"""The release store: one finished release per question and partner, and per Idempotency-Key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.database.engine import Database
from service.database.migrate import upgrade
from service.ledger.releases import ReleaseConflict, ReleaseStore
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def store(database_url: str) -> Iterator[ReleaseStore]:
    database = Database(database_url)
    upgrade(database)
    yield ReleaseStore(database)
    database.dispose()


def release(
    store: ReleaseStore,
    release_id: str,
    *,
    partner: str = "a",
    key: str = "q1",
    idempotency_key: str | None = None,
) -> None:
    with store.database.write() as conn:
        store.insert(
            conn,
            release_id=release_id,
            dataset="uk",
            partner=partner,
            query_key=key,
            request_hash="h-" + release_id,
            idempotency_key=idempotency_key,
            policy_version="v1",
            document={"release_id": release_id, "rows": []},
            measurement="{}",
        )


def test_the_same_question_of_the_same_partner_cannot_be_released_twice(
    store: ReleaseStore,
) -> None:
    release(store, "rel_1")

    with pytest.raises(ReleaseConflict):
        release(store, "rel_2")
    release(store, "rel_3", partner="b")

    assert store.find(dataset="uk", query_key="q1", partner="a").release_id == "rel_1"
    assert store.find(dataset="uk", query_key="q1", partner="b").release_id == "rel_3"
    assert store.find(dataset="uk", query_key="q1", partner=None).release_id == "rel_1"
    assert store.get("rel_2") is None


def test_an_idempotency_key_names_one_request_per_partner(store: ReleaseStore) -> None:
    release(store, "rel_1", idempotency_key="k")

    with pytest.raises(ReleaseConflict):
        release(store, "rel_2", key="q2", idempotency_key="k")
    release(store, "rel_3", partner="b", idempotency_key="k")

    assert store.find_idempotent("a", "k").release_id == "rel_1"
    assert store.find_idempotent("a", "other") is None


def test_a_stored_release_is_found_and_listed_with_its_document(store: ReleaseStore) -> None:
    release(store, "rel_1")
    release(store, "rel_2", key="q2")

    found = store.get("rel_1")
    assert found is not None
    assert found.document == {"release_id": "rel_1", "rows": []}
    assert {r.release_id for r in store.list(partners=["a"])} == {"rel_1", "rel_2"}
    assert store.list(partners=["b"]) == []
