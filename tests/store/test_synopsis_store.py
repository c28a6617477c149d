"""Sealed synopses: encrypted at rest, tamper-evident, moved by key rotation with the batches."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from service.components import Components
from service.crypto.errors import IntegrityError
from service.database.schema import synopses
from service.store.rotation import KeyInUse, KeyRotation
from service.store.synopses import SynopsisStore
from tests.conftest import BOTH_BACKENDS

DATASET = "nl-helpline-2024"


def _blob(components: Components, synopsis_id: str) -> tuple[str, bytes]:
    with components.database.read() as conn:
        row = conn.execute(
            select(synopses.c.kek_id, synopses.c.blob).where(synopses.c.id == synopsis_id)
        ).one()
    return str(row.kek_id), bytes(row.blob)


@BOTH_BACKENDS
def test_a_synopsis_is_sealed_and_survives_rotation_and_retirement(
    components: Components,
) -> None:
    built = components.synopses.build(DATASET, actor="admin:test").stored
    table = components.synopses.store.open(built).table
    old_kek, sealed = _blob(components, built.synopsis_id)
    # At rest: the envelope's magic, never the table's JSON.
    assert sealed.startswith(b"DPXE") and b'"table"' not in sealed
    rotation = KeyRotation(components.database, components.keyring, components.audit)
    plan = rotation.start()
    assert plan.pending == 1
    rotation.run(plan)
    assert rotation.batches_by_kek() == {plan.kek_id: 1}
    new_kek, rewrapped = _blob(components, built.synopsis_id)
    assert new_kek == plan.kek_id != old_kek and rewrapped != sealed
    rotation.retire(old_kek)
    # A fresh store (no cache) opens it under the new key, unchanged.
    fresh = SynopsisStore(components.database, components.keyring)
    assert fresh.open(built).table == table


def test_retiring_a_key_is_refused_while_a_synopsis_is_under_it(components: Components) -> None:
    built = components.synopses.build(DATASET, actor="admin:test").stored
    old_kek, _ = _blob(components, built.synopsis_id)
    rotation = KeyRotation(components.database, components.keyring, components.audit)
    components.keyring.add_kek()
    components.keyring.save()
    with pytest.raises(KeyInUse, match=f"{old_kek} still protects 1 batches"):
        rotation.retire(old_kek)


def test_a_tampered_synopsis_is_refused_never_decoded(components: Components) -> None:
    built = components.synopses.build(DATASET, actor="admin:test").stored
    _, sealed = _blob(components, built.synopsis_id)
    for position in (5, len(sealed) // 2, len(sealed) - 1):
        flipped = bytearray(sealed)
        flipped[position] ^= 0x01
        with components.database.write() as conn:
            conn.execute(
                update(synopses)
                .where(synopses.c.id == built.synopsis_id)
                .values(blob=bytes(flipped))
            )
        with pytest.raises(IntegrityError):
            SynopsisStore(components.database, components.keyring).open(built)
