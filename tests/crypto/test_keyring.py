"""The keyring file: 0600 from birth, refused when readable by others, passphrase-sealed on
request, rotated without losing old keys, saved atomically, never shown in a repr."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.crypto.errors import KeyringError, UnknownKey
from service.crypto.keyring import Keyring
from tests.crypto.key_bytes import all_key_bytes, audit_key_bytes, kek_bytes

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keyring.json"


@pytest.fixture
def keyring(path: Path) -> Keyring:
    return Keyring.create(path)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, as on a careless host."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def all_secret_encodings(keyring: Keyring) -> list[str]:
    """Every key's bytes as base64, hex and latin-1 text, to search displays for."""
    encodings = []
    for key in all_key_bytes(keyring):
        encodings += [base64.b64encode(key).decode(), key.hex(), key.decode("latin-1")]
    return encodings


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


# -- create and load -----------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_create_writes_a_0600_file_even_under_an_open_umask(path: Path) -> None:
    Keyring.create(path)

    assert mode_of(path) == 0o600


def test_create_holds_one_key_of_each_kind_with_readable_ids(keyring: Keyring) -> None:
    assert re.fullmatch(r"kek-[0-9a-f]{8}", keyring.primary_kek_id)
    assert keyring.kek_ids() == [keyring.primary_kek_id]
    assert len(kek_bytes(keyring, keyring.primary_kek_id)) == 32
    assert re.fullmatch(r"sig-[0-9a-f]{8}", keyring.signing_key_id)
    assert re.fullmatch(r"aud-[0-9a-f]{8}", keyring.audit_key_id)
    assert len(audit_key_bytes(keyring)) == 32


def test_create_writes_format_1(keyring: Keyring, path: Path) -> None:
    document = json.loads(path.read_text())

    assert document["format"] == 1


def test_two_keyrings_share_no_key(tmp_path: Path) -> None:
    first = Keyring.create(tmp_path / "a.json")
    second = Keyring.create(tmp_path / "b.json")

    assert set(all_secret_encodings(first)).isdisjoint(all_secret_encodings(second))


def test_create_refuses_to_overwrite_an_existing_keyring(keyring: Keyring, path: Path) -> None:
    before = path.read_bytes()

    with pytest.raises(KeyringError, match="already exists; refusing to overwrite it"):
        Keyring.create(path)

    assert path.read_bytes() == before


def test_create_in_a_missing_directory_is_a_keyring_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot create keyring"):
        Keyring.create(tmp_path / "absent" / "keyring.json")


def test_load_returns_the_same_keys(keyring: Keyring, path: Path) -> None:
    loaded = Keyring.load(path)

    assert loaded.kek_ids() == keyring.kek_ids()
    assert all_key_bytes(loaded) == all_key_bytes(keyring)
    assert loaded.signing_key_id == keyring.signing_key_id
    assert loaded.public_signing_keys() == keyring.public_signing_keys()
    assert loaded.audit_key_id == keyring.audit_key_id
    assert loaded.describe_keks() == keyring.describe_keks()


@pytest.mark.parametrize(
    "mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o666, 0o610], ids=lambda mode: f"{mode:04o}"
)
def test_load_refuses_a_keyring_others_can_read_or_write(
    keyring: Keyring, path: Path, mode: int
) -> None:
    path.chmod(mode)

    expected = f"keyring {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})"
    with pytest.raises(KeyringError, match=re.escape(expected)):
        Keyring.load(path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700], ids=lambda mode: f"{mode:04o}")
def test_load_accepts_a_keyring_only_its_owner_can_use(
    keyring: Keyring, path: Path, mode: int
) -> None:
    path.chmod(mode)

    assert Keyring.load(path).kek_ids() == keyring.kek_ids()


def test_load_of_a_missing_file_says_how_to_create_one(path: Path) -> None:
    with pytest.raises(KeyringError, match=r"does not exist; create one with `dpx init`"):
        Keyring.load(path)


def test_load_of_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keyring.json"
    directory.mkdir(mode=0o700)

    with pytest.raises(KeyringError, match="is not a regular file"):
        Keyring.load(directory)


def _edit(field: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(document: dict[str, Any]) -> Any:
        document[field] = value
        return document

    return edit


def _two_primaries(document: dict[str, Any]) -> dict[str, Any]:
    first = document["keks"][0]
    document["keks"].append(dict(first, id="kek-00000000"))
    document["secrets"]["keks"]["kek-00000000"] = document["secrets"]["keks"][first["id"]]
    return document


def _short_kek(document: dict[str, Any]) -> dict[str, Any]:
    key_id = document["keks"][0]["id"]
    document["secrets"]["keks"][key_id] = base64.b64encode(b"short").decode()
    return document


def _kek_without_secret(document: dict[str, Any]) -> dict[str, Any]:
    document["secrets"]["keks"] = {}
    return document


def _bad_base64(document: dict[str, Any]) -> dict[str, Any]:
    document["secrets"]["audit_key"] = "not base64!"
    return document


def _bad_status(document: dict[str, Any]) -> dict[str, Any]:
    document["signing_keys"][0]["status"] = "revoked"
    return document


def _bad_id(document: dict[str, Any]) -> dict[str, Any]:
    document["audit_key"]["id"] = "audit"
    return document


def _extra_field(document: dict[str, Any]) -> dict[str, Any]:
    document["comment"] = "hello"
    return document


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "is malformed: not a JSON document"),
        (lambda d: [d], "is malformed: the document must be an object"),
        (_edit("format", 2), "has format 2; this dpx reads format 1"),
        (_edit("format", True), "has format True; this dpx reads format 1"),
        (_edit("keks", []), "keks must be a non-empty list"),
        (_edit("audit_key", "aud"), "audit_key must be an object"),
        (_two_primaries, "keks must have exactly one primary key, not 2"),
        (_short_kek, r"secrets.keks\[kek-[0-9a-f]{8}\] must hold 32 bytes"),
        (_kek_without_secret, "secrets.keks must hold exactly the keys listed in keks"),
        (_bad_base64, "secrets.audit_key is not valid base64"),
        (_bad_status, "status 'revoked' is not one of"),
        (_bad_id, r"audit_key.id 'audit' is not aud-<8 hex digits>"),
        (_extra_field, "top-level fields must be"),
    ],
)
def test_load_names_what_is_wrong_with_a_malformed_keyring(
    keyring: Keyring, path: Path, edit: Callable[[dict[str, Any]], Any], message: str
) -> None:
    secrets = all_secret_encodings(keyring)
    edited = edit(json.loads(path.read_text()))
    write_private(path, edited if isinstance(edited, str) else json.dumps(edited))

    with pytest.raises(KeyringError, match=message) as caught:
        Keyring.load(path)

    assert str(path) in str(caught.value)
    assert not any(secret in str(caught.value) for secret in secrets)


# -- passphrase protection ------------------------------------------------------------------


def test_a_passphrase_keeps_every_key_out_of_the_file(path: Path) -> None:
    keyring = Keyring.create(path, passphrase=PASSPHRASE)
    text = path.read_text()
    raw = path.read_bytes()

    assert keyring.is_protected
    assert not any(secret in text for secret in all_secret_encodings(keyring))
    for key in all_key_bytes(keyring):
        assert key not in raw
    assert isinstance(json.loads(text)["secrets"], str)


def test_the_right_passphrase_opens_the_keyring(path: Path) -> None:
    keyring = Keyring.create(path, passphrase=PASSPHRASE)

    loaded = Keyring.load(path, passphrase=PASSPHRASE)

    assert all_key_bytes(loaded) == all_key_bytes(keyring)
    assert loaded.public_signing_keys() == keyring.public_signing_keys()
    assert loaded.is_protected


@pytest.mark.parametrize("wrong", ["Correct horse battery staple", "", "x" * 1000])
def test_a_wrong_passphrase_is_refused_without_showing_anything(path: Path, wrong: str) -> None:
    Keyring.create(path, passphrase=PASSPHRASE)

    with pytest.raises(KeyringError, match="^keyring passphrase is wrong or the file was altered$"):
        Keyring.load(path, passphrase=wrong)


def test_editing_key_metadata_of_a_protected_keyring_is_detected(path: Path) -> None:
    keyring = Keyring.create(path, passphrase=PASSPHRASE)
    keyring.add_kek()
    keyring.save()
    document = json.loads(path.read_text())
    # Demote the primary KEK and promote the old one: an attacker's way to make new
    # batches use a key they may know.
    for kek in document["keks"]:
        kek["status"] = "active" if kek["status"] == "primary" else "primary"
    write_private(path, json.dumps(document))

    with pytest.raises(KeyringError, match="passphrase is wrong or the file was altered"):
        Keyring.load(path, passphrase=PASSPHRASE)


def test_a_protected_keyring_needs_its_passphrase(path: Path) -> None:
    Keyring.create(path, passphrase=PASSPHRASE)

    with pytest.raises(KeyringError, match="is passphrase-protected; give its passphrase"):
        Keyring.load(path)


def test_a_passphrase_for_an_unprotected_keyring_is_refused(keyring: Keyring, path: Path) -> None:
    with pytest.raises(KeyringError, match="is not passphrase-protected"):
        Keyring.load(path, passphrase=PASSPHRASE)


def test_an_empty_passphrase_is_refused_at_create(path: Path) -> None:
    with pytest.raises(KeyringError, match="passphrase must not be empty"):
        Keyring.create(path, passphrase="")

    assert not path.exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n": 2**40}, r"protection.n must be an integer in"),
        ({"n": 2**15 + 1}, r"protection.n must be a power of two"),
        ({"n": 2**20, "r": 32}, r"needs more than 256 MiB of memory"),
        ({"p": 0}, r"protection.p must be an integer in"),
        ({"kdf": "pbkdf2"}, r"protection must use kdf scrypt"),
    ],
)
def test_absurd_scrypt_parameters_are_refused_before_deriving(
    path: Path, settings: dict[str, Any], message: str
) -> None:
    Keyring.create(path, passphrase=PASSPHRASE)
    document = json.loads(path.read_text())
    document["protection"].update(settings)
    write_private(path, json.dumps(document))

    with pytest.raises(KeyringError, match=message):
        Keyring.load(path, passphrase=PASSPHRASE)


def test_save_keeps_passphrase_protection(path: Path) -> None:
    keyring = Keyring.create(path, passphrase=PASSPHRASE)
    new_kek = keyring.add_kek()
    keyring.save()

    assert not any(secret in path.read_text() for secret in all_secret_encodings(keyring))
    loaded = Keyring.load(path, passphrase=PASSPHRASE)
    assert loaded.primary_kek_id == new_kek
    assert kek_bytes(loaded, new_kek) == kek_bytes(keyring, new_kek)
    with pytest.raises(KeyringError, match="passphrase is wrong"):
        Keyring.load(path, passphrase="guess")


# -- KEK rotation --------------------------------------------------------------------------


def test_add_kek_makes_the_new_key_primary_and_keeps_the_old_one(keyring: Keyring) -> None:
    old = keyring.primary_kek_id
    old_bytes = kek_bytes(keyring, old)

    new = keyring.add_kek()

    assert keyring.primary_kek_id == new != old
    assert keyring.kek_ids() == [old, new]
    assert kek_bytes(keyring, old) == old_bytes
    assert kek_bytes(keyring, new) != old_bytes
    statuses = {entry["id"]: entry["status"] for entry in keyring.describe_keks()}
    assert statuses == {old: "active", new: "primary"}


def test_remove_kek_drops_an_active_key(keyring: Keyring, path: Path) -> None:
    old = keyring.primary_kek_id
    new = keyring.add_kek()

    keyring.remove_kek(old)
    keyring.save()

    assert keyring.kek_ids() == [new]
    with pytest.raises(UnknownKey, match=f"no key-encryption key {old} in the keyring"):
        keyring.unwrap(old, bytes(12), bytes(48), b"")
    assert Keyring.load(path).kek_ids() == [new]


def test_the_primary_kek_cannot_be_removed(keyring: Keyring) -> None:
    primary = keyring.primary_kek_id

    with pytest.raises(KeyringError, match=f"{primary} is the primary key-encryption key"):
        keyring.remove_kek(primary)

    assert keyring.kek_ids() == [primary]


def test_removing_an_unknown_kek_is_an_unknown_key_error(keyring: Keyring) -> None:
    with pytest.raises(UnknownKey, match="no key-encryption key kek-ffffffff"):
        keyring.remove_kek("kek-ffffffff")


def test_describe_keks_shows_no_key_bytes(keyring: Keyring) -> None:
    keyring.add_kek()

    description = keyring.describe_keks()

    assert all(set(entry) == {"id", "status", "created"} for entry in description)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["created"]) for e in description)
    assert not any(secret in repr(description) for secret in all_secret_encodings(keyring))


# -- signing keys --------------------------------------------------------------------------


def test_public_signing_keys_publish_the_raw_ed25519_public_key(keyring: Keyring) -> None:
    (published,) = keyring.public_signing_keys()

    assert set(published) == {"key_id", "alg", "public_key", "status"}
    assert published["key_id"] == keyring.signing_key_id
    assert published["alg"] == "Ed25519"
    assert published["status"] == "current"
    raw = base64.b64decode(published["public_key"], validate=True)
    public = Ed25519PublicKey.from_public_bytes(raw)
    key_id, signature = keyring.sign(b"release")
    assert key_id == keyring.signing_key_id
    public.verify(signature, b"release")


def test_rotate_signing_key_retires_the_old_key_and_still_publishes_it(
    keyring: Keyring, path: Path
) -> None:
    old = keyring.signing_key_id

    new = keyring.rotate_signing_key()
    keyring.save()

    assert keyring.signing_key_id == new != old
    statuses = {k["key_id"]: k["status"] for k in Keyring.load(path).public_signing_keys()}
    assert statuses == {old: "retired", new: "current"}
    published = {k["key_id"]: k["public_key"] for k in keyring.public_signing_keys()}
    assert published[old] != published[new]
    key_id, signature = keyring.sign(b"release")
    assert key_id == new
    Ed25519PublicKey.from_public_bytes(base64.b64decode(published[new])).verify(
        signature, b"release"
    )


# -- display and persistence ---------------------------------------------------------------


def test_repr_names_keys_but_never_shows_key_material(path: Path) -> None:
    keyring = Keyring.create(path, passphrase=PASSPHRASE)
    keyring.add_kek()
    keyring.rotate_signing_key()

    shown = repr(keyring)

    assert keyring.primary_kek_id in shown
    assert keyring.signing_key_id in shown
    assert not any(secret in shown for secret in all_secret_encodings(keyring))
    assert PASSPHRASE not in shown


@pytest.mark.usefixtures("open_umask")
def test_save_replaces_the_file_atomically_and_keeps_0600(keyring: Keyring, path: Path) -> None:
    old_inode = path.stat().st_ino
    with path.open("rb") as reader_of_the_old_file:
        new = keyring.add_kek()
        keyring.save()
        # A reader holding the old file still sees all of it: the new keyring arrived by
        # rename, never by rewriting the old file in place.
        old_document = json.loads(reader_of_the_old_file.read())

    assert [k["id"] for k in old_document["keks"]] == [keyring.kek_ids()[0]]
    assert path.stat().st_ino != old_inode
    assert mode_of(path) == 0o600
    assert Keyring.load(path).primary_kek_id == new
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_to_a_vanished_directory_is_a_keyring_error(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    keyring = Keyring.create(directory / "keyring.json")
    (directory / "keyring.json").unlink()
    directory.rmdir()

    with pytest.raises(KeyringError, match="cannot save keyring"):
        keyring.save()
