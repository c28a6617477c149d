"""Envelope encryption of batches: round trips, and every form of tampering, truncation or
swapping is an IntegrityError and nothing else; KEK rotation by rewrap and by re-encryption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.crypto.envelope import (
    MAGIC,
    Sealed,
    open_sealed,
    reencrypt,
    rewrap,
    seal,
)
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from tests.crypto.key_bytes import kek_bytes

DATASET = "uk-helpline-2024"
BATCH = "bat_01"
CELLS = b"month,channel,contacts\n2024-01,chat,41\n"
FAILED = f"batch {BATCH} of dataset {DATASET} failed its integrity check"

# Header layout of format 1 with a keyring id "kek-<8 hex>" (12 bytes).
_KEK_ID_END = 4 + 1 + 1 + 12
_WRAP_NONCE_END = _KEK_ID_END + 12
_WRAPPED_KEY_END = _WRAP_NONCE_END + 48
_DATA_NONCE_END = _WRAPPED_KEY_END + 12
_CIPHERTEXT_END = _DATA_NONCE_END + len(CELLS)
REGIONS = {
    "magic": (0, 4),
    "version": (4, 5),
    "kek id length": (5, 6),
    "kek id": (6, _KEK_ID_END),
    "wrap nonce": (_KEK_ID_END, _WRAP_NONCE_END),
    "wrapped key": (_WRAP_NONCE_END, _WRAPPED_KEY_END),
    "data nonce": (_WRAPPED_KEY_END, _DATA_NONCE_END),
    "ciphertext": (_DATA_NONCE_END, _CIPHERTEXT_END),
    "tag": (_CIPHERTEXT_END, _CIPHERTEXT_END + 16),
}


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json")


@pytest.fixture
def sealed(keyring: Keyring) -> Sealed:
    return seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH)


def open_cells(keyring: Keyring, blob: bytes) -> bytes:
    return open_sealed(keyring, blob, dataset=DATASET, batch_id=BATCH)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", [b"", b"x", CELLS, os.urandom(1_000_000)], ids=["empty", "1 B", "cells", "1 MB"]
)
def test_sealed_plaintext_opens_to_itself(keyring: Keyring, plaintext: bytes) -> None:
    sealed = seal(keyring, plaintext, dataset=DATASET, batch_id=BATCH)

    assert open_cells(keyring, sealed.blob) == plaintext
    assert len(sealed.blob) == _DATA_NONCE_END + len(plaintext) + 16


def test_a_sealed_blob_names_the_primary_kek_and_hides_the_plaintext(
    keyring: Keyring, sealed: Sealed
) -> None:
    assert sealed.kek_id == keyring.primary_kek_id
    assert sealed.blob[6:_KEK_ID_END] == sealed.kek_id.encode()
    assert sealed.blob.startswith(MAGIC + b"\x01")
    assert CELLS not in sealed.blob
    assert b"41" not in sealed.blob[_DATA_NONCE_END:]
    assert kek_bytes(keyring, sealed.kek_id) not in sealed.blob


def test_every_seal_uses_a_fresh_data_key_and_nonce(keyring: Keyring) -> None:
    blobs = [seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH).blob for _ in range(20)]

    assert len({blob[_KEK_ID_END:] for blob in blobs}) == 20
    assert len({blob[_WRAP_NONCE_END:_WRAPPED_KEY_END] for blob in blobs}) == 20
    assert len({blob[_WRAPPED_KEY_END:_DATA_NONCE_END] for blob in blobs}) == 20


def test_repr_of_sealed_omits_the_blob(sealed: Sealed) -> None:
    assert repr(sealed) == f"Sealed(kek_id={sealed.kek_id!r})"


def test_a_keyring_reloaded_from_disk_opens_what_it_sealed(
    keyring: Keyring, sealed: Sealed
) -> None:
    assert open_cells(Keyring.load(keyring.path), sealed.blob) == CELLS


# -- tampering -----------------------------------------------------------------------------


def test_the_tamper_regions_cover_the_whole_blob(sealed: Sealed) -> None:
    covered = sorted(REGIONS.values())

    assert covered[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert covered[-1][1] == len(sealed.blob)


@pytest.mark.parametrize("region", list(REGIONS))
def test_flipping_any_bit_is_an_integrity_error(
    keyring: Keyring, sealed: Sealed, region: str
) -> None:
    start, end = REGIONS[region]
    for offset in range(start, end):
        for bit in range(8):
            tampered = bytearray(sealed.blob)
            tampered[offset] ^= 1 << bit

            with pytest.raises(IntegrityError, match=f"^{FAILED}") as caught:
                open_cells(keyring, bytes(tampered))

            assert CELLS.decode() not in str(caught.value)


def test_truncation_at_every_length_is_an_integrity_error(keyring: Keyring, sealed: Sealed) -> None:
    for length in range(len(sealed.blob)):
        with pytest.raises(IntegrityError, match=f"^{FAILED}"):
            open_cells(keyring, sealed.blob[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10, os.urandom(16)])
def test_appended_bytes_are_an_integrity_error(
    keyring: Keyring, sealed: Sealed, extra: bytes
) -> None:
    with pytest.raises(IntegrityError, match=f"^{FAILED}$"):
        open_cells(keyring, sealed.blob + extra)


@pytest.mark.parametrize(
    ("dataset", "batch_id"),
    [
        (DATASET, "bat_02"),
        ("ie-helpline-2024", BATCH),
        ("ie-helpline-2024", "bat_02"),
        (DATASET, BATCH.upper()),
        (DATASET + "\x00", BATCH),
    ],
)
def test_a_blob_moved_to_another_batch_or_dataset_is_an_integrity_error(
    keyring: Keyring, sealed: Sealed, dataset: str, batch_id: str
) -> None:
    expected = f"^batch {batch_id} of dataset {dataset} failed its integrity check$"
    with pytest.raises(IntegrityError, match=expected):
        open_sealed(keyring, sealed.blob, dataset=dataset, batch_id=batch_id)


def test_dataset_and_batch_boundaries_cannot_be_shifted(keyring: Keyring) -> None:
    blob = seal(keyring, CELLS, dataset="uk-2024", batch_id="bat").blob

    with pytest.raises(IntegrityError):
        open_sealed(keyring, blob, dataset="uk", batch_id="2024bat")
    with pytest.raises(IntegrityError):
        open_sealed(keyring, blob, dataset="uk-2024b", batch_id="at")


def test_swapping_wrapped_keys_between_two_blobs_is_an_integrity_error(
    keyring: Keyring,
) -> None:
    first = seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH).blob
    second = seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH).blob
    spliced = first[:_WRAPPED_KEY_END] + second[_WRAPPED_KEY_END:]

    with pytest.raises(IntegrityError, match=f"^{FAILED}$"):
        open_cells(keyring, spliced)


def test_a_blob_under_another_keyrings_kek_is_an_unknown_key(
    tmp_path: Path, keyring: Keyring
) -> None:
    stranger = Keyring.create(tmp_path / "other.json")
    blob = seal(stranger, CELLS, dataset=DATASET, batch_id=BATCH).blob

    with pytest.raises(
        UnknownKey, match=f"sealed under key-encryption key {stranger.primary_kek_id}"
    ):
        open_cells(keyring, blob)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "truncated header"),
        (b"DPX", "truncated header"),
        (b"PK\x03\x04" + bytes(200), "not a dpx envelope"),
        (MAGIC + b"\x02" + bytes(200), "unknown envelope version 2"),
        (MAGIC + b"\x01\x00" + bytes(200), "malformed KEK id"),
        (MAGIC + b"\x01\x0ckek-\xff\xfe" + bytes(200), "malformed KEK id"),
        (MAGIC + b"\x01\xff" + b"k" * 100, "truncated"),
    ],
)
def test_garbage_is_an_integrity_error_that_says_why(
    keyring: Keyring, blob: bytes, reason: str
) -> None:
    with pytest.raises(IntegrityError, match=rf"^{FAILED} \({reason}\)$"):
        open_cells(keyring, blob)


def test_a_value_that_is_not_bytes_is_an_integrity_error(keyring: Keyring) -> None:
    with pytest.raises(IntegrityError, match="not bytes"):
        open_cells(keyring, "DPXE")  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: MAGIC + b"\x01" + b))
def test_open_sealed_raises_only_integrity_errors_on_arbitrary_bytes(
    keyring: Keyring, blob: bytes
) -> None:
    with pytest.raises(IntegrityError):
        open_cells(keyring, blob)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_splice_of_two_sealed_blobs_fails(keyring: Keyring, data: st.DataObject) -> None:
    first = seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH).blob
    second = seal(keyring, CELLS, dataset=DATASET, batch_id=BATCH).blob
    # Both blobs share magic, version and KEK id; a cut inside that prefix is just `second`.
    cut = data.draw(st.integers(min_value=_KEK_ID_END + 1, max_value=len(first) - 1))

    with pytest.raises(IntegrityError):
        open_cells(keyring, first[:cut] + second[cut:])


# -- rotation ------------------------------------------------------------------------------


def test_rewrap_moves_a_blob_to_the_new_primary_without_touching_the_ciphertext(
    keyring: Keyring, sealed: Sealed
) -> None:
    old = keyring.primary_kek_id
    new = keyring.add_kek()

    rewrapped = rewrap(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH)

    assert rewrapped.kek_id == new != old
    assert rewrapped.blob[6:_KEK_ID_END] == new.encode()
    assert rewrapped.blob[_WRAPPED_KEY_END:] == sealed.blob[_WRAPPED_KEY_END:]
    assert open_cells(keyring, rewrapped.blob) == CELLS


def test_after_rewrap_the_old_kek_can_be_removed(keyring: Keyring, sealed: Sealed) -> None:
    old = keyring.primary_kek_id
    straggler = seal(keyring, b"not yet rewrapped", dataset=DATASET, batch_id="bat_02")
    keyring.add_kek()
    rewrapped = rewrap(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH)

    keyring.remove_kek(old)
    keyring.save()
    reloaded = Keyring.load(keyring.path)

    assert open_cells(reloaded, rewrapped.blob) == CELLS
    with pytest.raises(IntegrityError, match=f"sealed under key-encryption key {old}"):
        open_sealed(reloaded, straggler.blob, dataset=DATASET, batch_id="bat_02")


def test_rewrap_to_a_named_kek(keyring: Keyring, sealed: Sealed) -> None:
    old = keyring.primary_kek_id
    keyring.add_kek()
    on_new = rewrap(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH)

    back = rewrap(keyring, on_new.blob, dataset=DATASET, batch_id=BATCH, kek_id=old)

    assert back.kek_id == old
    assert open_cells(keyring, back.blob) == CELLS


def test_rewrap_to_an_unknown_kek_is_refused(keyring: Keyring, sealed: Sealed) -> None:
    with pytest.raises(UnknownKey, match="no key-encryption key kek-00000000"):
        rewrap(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH, kek_id="kek-00000000")


def test_rewrap_refuses_a_blob_of_another_batch(keyring: Keyring, sealed: Sealed) -> None:
    keyring.add_kek()

    with pytest.raises(IntegrityError, match="batch bat_02 of dataset"):
        rewrap(keyring, sealed.blob, dataset=DATASET, batch_id="bat_02")


def test_a_rewrapped_blob_stays_bound_to_its_batch(keyring: Keyring, sealed: Sealed) -> None:
    keyring.add_kek()
    rewrapped = rewrap(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH)

    with pytest.raises(IntegrityError):
        open_sealed(keyring, rewrapped.blob, dataset=DATASET, batch_id="bat_02")


def test_reencrypt_uses_a_fresh_data_key_under_the_primary(
    keyring: Keyring, sealed: Sealed
) -> None:
    new = keyring.add_kek()

    again = reencrypt(keyring, sealed.blob, dataset=DATASET, batch_id=BATCH)

    assert again.kek_id == new
    assert again.blob[_WRAPPED_KEY_END:] != sealed.blob[_WRAPPED_KEY_END:]
    assert open_cells(keyring, again.blob) == CELLS


def test_reencrypt_refuses_a_tampered_blob(keyring: Keyring, sealed: Sealed) -> None:
    tampered = sealed.blob[:-1] + bytes([sealed.blob[-1] ^ 1])

    with pytest.raises(IntegrityError, match=f"^{FAILED}$"):
        reencrypt(keyring, tampered, dataset=DATASET, batch_id=BATCH)
