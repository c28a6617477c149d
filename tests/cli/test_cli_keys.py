"""dpx rotate-keys, keys list, rotate-signing-key, and a passphrase-protected keyring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from service.app import create_app
from service.cli import main
from service.components import Components
from service.config import Settings
from service.crypto.errors import KeyringError
from service.crypto.keyring import Keyring
from service.crypto.signing import sign_document, verify_signature
from service.store.ingest import parse_batch

DATASET = "uk-helpline-2024"
CELLS = (
    b"month,country,channel,caller_type,referral_source,contacts,minutes\n"
    b"2024-03,GB,web,professional,search_warning,4,33\n"
)
PASSPHRASE = "correct horse battery staple"


def env_of(settings: Settings, passphrase: str | None = None) -> dict[str, str | None]:
    return {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_KEYRING_PASSPHRASE": passphrase,
    }


def dpx(settings: Settings, *args: str, passphrase: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env_of(settings, passphrase))


def upload(components: Components, count: int) -> None:
    dataset = components.exchange.policies.datasets[DATASET]
    for _ in range(count):
        cells = parse_batch(CELLS, content_type="text/csv", form="cells", dataset=dataset)
        components.store.add(dataset, cells, form="cells", actor="test")


def key_table(result: Result) -> list[list[str]]:
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["kek_id", "status", "created", "batches", "documents"]
    return [line.split("\t") for line in lines[1:]]


def test_keys_list_shows_each_key_and_the_batches_it_protects(
    components: Components, settings: Settings
) -> None:
    upload(components, 3)
    [(kek_id, status, created, count, documents)] = key_table(dpx(settings, "keys", "list"))
    assert (kek_id, status, count) == (components.keyring.primary_kek_id, "primary", "3")
    assert documents == "1"  # the dataset's merged cells
    assert created.endswith("Z")


def test_rotate_keys_moves_every_batch_and_names_the_key_to_retire(
    components: Components, settings: Settings
) -> None:
    upload(components, 3)
    old = components.keyring.primary_kek_id

    result = dpx(settings, "rotate-keys", "--batch-size", "2")

    assert result.exit_code == 0, result.output
    new = Keyring.load(settings.keyring_path).primary_kek_id
    assert f"rotating to {new} (new primary; was {old}): 3 batches to rewrap" in result.stdout
    assert f"rotation to {new} finished: 3 batches moved" in result.stdout
    assert f"dpx rotate-keys --retire {old}" in result.stdout
    rows = key_table(dpx(settings, "keys", "list"))
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (old, "active", "0", "0"),
        (new, "primary", "3", "1"),
    ]


def test_retire_is_refused_while_batches_need_the_key_and_then_removes_it(
    components: Components, settings: Settings
) -> None:
    upload(components, 2)
    old = components.keyring.primary_kek_id

    refused = dpx(settings, "rotate-keys", "--retire", old)
    assert refused.exit_code == 1
    assert f"{old} is the primary key-encryption key" in refused.stderr

    assert dpx(settings, "rotate-keys").exit_code == 0
    mixed = dpx(settings, "rotate-keys", "--retire", old, "--reencrypt")
    assert mixed.exit_code == 1 and "without --reencrypt" in mixed.stderr
    retired = dpx(settings, "rotate-keys", "--retire", old)
    assert retired.exit_code == 0, retired.output
    assert f"retired {old}" in retired.stdout
    assert [r[0] for r in key_table(dpx(settings, "keys", "list"))] == [
        Keyring.load(settings.keyring_path).primary_kek_id
    ]


def test_retiring_a_key_that_still_protects_batches_is_refused(
    components: Components, settings: Settings
) -> None:
    upload(components, 2)
    old = components.keyring.primary_kek_id
    components.keyring.add_kek()
    components.keyring.save()  # a rotation that stopped after saving its key

    refused = dpx(settings, "rotate-keys", "--retire", old)
    assert refused.exit_code == 1
    assert (
        f"{old} still protects 2 batches and 1 dataset document; run `dpx rotate-keys`"
        in refused.stderr
    )
    assert old in Keyring.load(settings.keyring_path).kek_ids()

    resumed = dpx(settings, "rotate-keys")
    assert "resuming rotation to" in resumed.stdout and "2 batches left" in resumed.stdout
    assert dpx(settings, "rotate-keys", "--retire", old).exit_code == 0


def test_rotate_keys_help_explains_resuming() -> None:
    result = CliRunner().invoke(main, ["rotate-keys", "--help"])
    assert "Resuming is the default" in result.output
    assert "--batch-size" in result.output and "--reencrypt" in result.output


def test_rotate_signing_key_keeps_old_releases_verifiable(
    app: Flask, settings: Settings, components: Components
) -> None:
    old = components.keyring.signing_key_id
    before = {"release_id": "rel_1", "rows": [{"value": 3}]}
    before["signature"] = sign_document(components.keyring, before)

    result = dpx(settings, "rotate-signing-key")

    assert result.exit_code == 0, result.output
    published = app.test_client().get("/v1/signing-keys").get_json()["keys"]
    statuses = {key["key_id"]: key["status"] for key in published}
    new = Keyring.load(settings.keyring_path).signing_key_id
    assert statuses == {old: "retired", new: "current"}
    assert verify_signature(before, published)
    # The running app took over the new key: what it signs now verifies with it.
    after = {"release_id": "rel_2"}
    after["signature"] = sign_document(app.extensions["dpx.keyring"], after)
    assert after["signature"]["key_id"] == new and verify_signature(after, published)


# -- passphrase protection ------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path, database_url: str, policy_dir: Path) -> Settings:
    """Settings of a deployment that `dpx init` has not set up yet."""
    data_dir = tmp_path / "fresh"
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        keyring_path=data_dir / "keyring.json",
        policy_dir=policy_dir,
    )


def test_init_with_a_passphrase_creates_a_protected_keyring(fresh: Settings) -> None:
    result = dpx(fresh, "init", passphrase=PASSPHRASE)

    assert result.exit_code == 0, result.output
    document = json.loads(fresh.keyring_path.read_text())
    assert document["protection"]["kdf"] == "scrypt"
    assert isinstance(document["secrets"], str)  # one sealed string, no key in the clear
    with pytest.raises(KeyringError, match="passphrase-protected; give its passphrase"):
        Keyring.load(fresh.keyring_path)
    assert Keyring.load(fresh.keyring_path, PASSPHRASE).is_protected


def test_the_service_starts_with_the_passphrase_and_refuses_a_wrong_one(fresh: Settings) -> None:
    assert dpx(fresh, "init", passphrase=PASSPHRASE).exit_code == 0

    app = create_app(replace(fresh, keyring_passphrase=PASSPHRASE))
    try:
        assert app.test_client().get("/v1/signing-keys").status_code == 200
    finally:
        app.extensions["dpx.database"].dispose()
    with pytest.raises(KeyringError, match="passphrase is wrong or the file was altered"):
        create_app(replace(fresh, keyring_passphrase="wrong " + PASSPHRASE))
    refused = dpx(fresh, "keys", "list", passphrase="wrong")
    assert refused.exit_code == 1
    assert "passphrase is wrong" in refused.stderr and PASSPHRASE not in refused.output


def test_rotation_of_a_protected_keyring_keeps_it_protected_and_readable(fresh: Settings) -> None:
    assert dpx(fresh, "init", passphrase=PASSPHRASE).exit_code == 0
    service = Components.open(replace(fresh, keyring_passphrase=PASSPHRASE))
    try:
        upload(service, 2)
        result = dpx(fresh, "rotate-keys", passphrase=PASSPHRASE)
        assert result.exit_code == 0, result.output
        assert Keyring.load(fresh.keyring_path, PASSPHRASE).is_protected
        # The running service reloads the protected file without the passphrase.
        dataset = service.exchange.policies.datasets[DATASET]
        # The check decrypts every batch and the merged cells afresh.
        check = service.store.check_cells(dataset)
        assert (check.agree, check.batches, check.cells) == (True, 2, 1)
        assert len(service.keyring.kek_ids()) == 2
    finally:
        service.database.dispose()
