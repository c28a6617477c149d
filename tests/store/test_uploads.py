"""The digest that recognises a re-sent upload is keyed by the deployment's keyring."""

from __future__ import annotations

from pathlib import Path

from service.crypto.keyring import Keyring
from service.store.uploads import Upload

BODY = b"month,country\n2024-01,GB\n"


def test_digest_depends_on_key_dataset_and_bytes(tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "a.json")
    other_deployment = Keyring.create(tmp_path / "b.json")
    digest = Upload.of(keyring, "uk-helpline-2024", BODY, form="contacts").digest
    assert Upload.of(keyring, "uk-helpline-2024", BODY, form="contacts").digest == digest
    assert (
        Upload.of(Keyring.load(keyring.path), "uk-helpline-2024", BODY, form="contacts").digest
        == digest
    )
    others = {
        Upload.of(other_deployment, "uk-helpline-2024", BODY, form="contacts").digest,
        Upload.of(keyring, "nl-helpline-2024", BODY, form="contacts").digest,
        Upload.of(keyring, "uk-helpline-2024", BODY + b"\n", form="contacts").digest,
    }
    assert digest not in others and len(others) == 3


def test_digest_survives_key_rotation(tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    before = Upload.of(keyring, "uk-helpline-2024", BODY, form="contacts").digest
    keyring.add_kek()
    keyring.rotate_signing_key()
    keyring.save()
    after = Upload.of(Keyring.load(keyring.path), "uk-helpline-2024", BODY, form="contacts")
    assert after.digest == before
