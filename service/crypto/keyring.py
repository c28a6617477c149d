"""The keyring: every long-lived key of a dpx deployment, in one versioned 0600 JSON file.

It holds the key-encryption keys (KEKs) that wrap the data key of every stored batch, the
Ed25519 keys that sign releases, and the HMAC key that chains the audit log. Keys are found
by id, so old ones keep working while new ones take over (rotation without downtime).

Keys are used here, never handed out: other modules ask the keyring to `wrap` or `unwrap` a
data key, to `sign`, to `audit_mac`, or to `mac` under a key derived for one purpose, and no
method returns the bytes of a key it holds. `derive` alone returns key bytes: a subkey for
one named purpose, for a library that must hold its own key (Flask's cookie signer).

File layout, format 1::

    {"format": 1,
     "keks": [{"id": "kek-1a2b3c4d", "status": "primary", "created": "2026-01-05T10:00:00Z"}],
     "signing_keys": [{"id": "sig-…", "status": "current", "created": "…"}],
     "audit_key": {"id": "aud-…", "created": "…"},
     "protection": null,
     "secrets": {"keks": {"kek-1a2b3c4d": "<base64>"}, "signing_keys": {"sig-…": "<base64>"},
                 "audit_key": "<base64>"}}

With a passphrase, "protection" holds the Scrypt parameters, salt and AES-GCM nonce, and
"secrets" is the base64 AES-256-GCM ciphertext of the secrets object. The rest of the file
is the associated data of that ciphertext, so an edit to the key metadata (which KEK is
primary, which signing key is current) is detected as surely as a wrong passphrase.

Mutating methods (`add_kek`, `remove_kek`, `rotate_signing_key`) change the keyring in
memory; `save()` writes it back atomically. A long-running process takes over keys that
another process saved (a key rotation run by `dpx`) with `reload()`, or with `refresh()`
when the file changed since this process last read or wrote it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from service.crypto.errors import KeyringError, UnknownKey
from service.crypto.signing import canonical_json

FORMAT = 1

KekStatus = Literal["primary", "active"]
SigningKeyStatus = Literal["current", "retired"]

# Every symmetric key (KEK, audit HMAC key) is 256 bits; Ed25519 private keys are 32 raw bytes.
_KEY_BYTES = 32
_NONCE_BYTES = 12
_SALT_BYTES = 16

# Scrypt cost for the passphrase: n=2**15, r=8 costs 32 MiB and a fraction of a second,
# paid once per process start. The bounds accepted on load keep an edited file from asking
# for gigabytes of memory while leaving room to raise the cost later.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_N_RANGE = (2**14, 2**20)
_SCRYPT_R_MAX = 32
_SCRYPT_P_MAX = 16
_SCRYPT_MEMORY_MAX = 256 * 2**20  # bytes; scrypt needs 128 * n * r

_ID_PATTERNS = {
    "kek": re.compile(r"kek-[0-9a-f]{8}"),
    "sig": re.compile(r"sig-[0-9a-f]{8}"),
    "aud": re.compile(r"aud-[0-9a-f]{8}"),
}
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_UNSEAL_FAILED = "keyring passphrase is wrong or the file was altered"

# What identifies one version of the keyring file: save() always writes a new file and
# renames it into place, so the inode changes with every save.
_Stamp = tuple[int, int, int, int]


@dataclass
class _Kek:
    id: str
    status: KekStatus
    created: str
    key: bytes = field(repr=False)


@dataclass
class _SigningKey:
    id: str
    status: SigningKeyStatus
    created: str
    private: bytes = field(repr=False)


@dataclass(frozen=True)
class _AuditKey:
    id: str
    created: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class _Protection:
    """Passphrase protection: the Scrypt parameters and the key they derived.

    The derived key, not the passphrase, is kept in memory so that `save()` can encrypt
    again without asking for the passphrase; each save uses a fresh random nonce.
    """

    salt: bytes
    n: int
    r: int
    p: int
    key: bytes = field(repr=False)

    @classmethod
    def derive(cls, passphrase: str, salt: bytes, n: int, r: int, p: int) -> _Protection:
        kdf = Scrypt(salt=salt, length=_KEY_BYTES, n=n, r=r, p=p)
        return cls(salt=salt, n=n, r=r, p=p, key=kdf.derive(passphrase.encode("utf-8")))


class _Malformed(Exception):
    """A structural fault in the keyring file; becomes a KeyringError naming the file."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _new_id(prefix: str, taken: set[str]) -> str:
    while True:
        key_id = f"{prefix}-{secrets.token_hex(4)}"
        if key_id not in taken:
            return key_id


class Keyring:
    """Versioned keys by id, loaded from and saved to one 0600 file.

    Build one with `Keyring.create` or `Keyring.load`; the constructor is for those two.
    """

    def __init__(
        self,
        path: Path,
        *,
        keks: list[_Kek],
        signing_keys: list[_SigningKey],
        audit_key: _AuditKey,
        protection: _Protection | None,
    ) -> None:
        self._path = Path(path)
        self._keks = keks
        self._signing_keys = signing_keys
        self._audit_key = audit_key
        self._protection = protection
        self._stamp: _Stamp | None = None
        # Set by add_kek, remove_kek and rotate_signing_key, cleared by save(): unsaved
        # changes are never silently replaced by the file's keys.
        self._unsaved = False
        self._reload_lock = threading.Lock()
        self._checked_at = time.monotonic()

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, passphrase: str | None = None) -> Keyring:
        """Write a new keyring with one KEK, one signing key and one audit key.

        The file is created with mode 0600 from the first byte (never widened and narrowed
        afterwards) and is never overwritten: an existing file is a `KeyringError`.
        With a passphrase, the key material is stored encrypted under a Scrypt-derived key.
        """
        path = Path(path)
        if passphrase == "":
            raise KeyringError("keyring passphrase must not be empty")
        protection = None
        if passphrase is not None:
            protection = _Protection.derive(
                passphrase, os.urandom(_SALT_BYTES), _SCRYPT_N, _SCRYPT_R, _SCRYPT_P
            )
        created = _now()
        keyring = cls(
            path,
            keks=[_Kek(_new_id("kek", set()), "primary", created, AESGCM.generate_key(256))],
            signing_keys=[
                _SigningKey(
                    _new_id("sig", set()),
                    "current",
                    created,
                    Ed25519PrivateKey.generate().private_bytes_raw(),
                )
            ],
            audit_key=_AuditKey(_new_id("aud", set()), created, secrets.token_bytes(_KEY_BYTES)),
            protection=protection,
        )
        data = keyring._serialize()
        try:
            # O_EXCL: refuse to replace an existing keyring, whose keys may still be needed
            # to open stored batches. Mode 0600 is set at creation, so no moment exists at
            # which another user could read the keys.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyringError(f"keyring {path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise KeyringError(f"cannot create keyring {path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            _fsync_directory(path.parent)
            keyring._stamp = _stamp_of(os.stat(path))
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise KeyringError(f"cannot write keyring {path}: {exc.strerror}") from None
        return keyring

    @classmethod
    def load(cls, path: Path, passphrase: str | None = None) -> Keyring:
        """Read a keyring, refusing one that is missing, malformed, altered or not 0600.

        Every failure is a `KeyringError` whose message names the file and says what would
        be right; no message ever contains key bytes.
        """
        path = Path(path)
        raw, stamp = _read(path)
        keyring = cls._from_bytes(path, raw, passphrase, None)
        keyring._stamp = stamp
        return keyring

    @classmethod
    def _from_bytes(
        cls, path: Path, raw: bytes, passphrase: str | None, known: _Protection | None
    ) -> Keyring:
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyringError(f"keyring {path} is malformed: not a JSON document") from None
        try:
            return cls._parse(path, document, passphrase, known)
        except _Malformed as exc:
            raise KeyringError(f"keyring {path} is malformed: {exc}") from None

    def reload(self) -> None:
        """Read the keyring file again and take over its KEKs and signing keys.

        A rotation run by `dpx` in another process adds and retires keys in the file; a
        running service calls this when it meets a KEK id it does not hold. A protected
        keyring is unsealed with the key derived when it was loaded, so the passphrase is
        not needed again; a file sealed under another passphrase, or holding another audit
        key, is refused (`KeyringError`) and the keys in memory stay as they were.
        """
        with self._reload_lock:
            if self._unsaved:
                raise KeyringError(
                    f"keyring {self._path} has unsaved changes; save() them before reloading"
                )
            raw, stamp = _read(self._path)
            fresh = self._from_bytes(self._path, raw, None, self._protection)
            if fresh._audit_key.id != self._audit_key.id:
                raise KeyringError(
                    f"keyring {self._path} now holds audit key {fresh._audit_key.id}, not "
                    f"{self._audit_key.id}; restart the service to use it"
                )
            # Whole lists are swapped, never edited in place, so a thread reading keys
            # concurrently sees the old set or the new one.
            self._keks = fresh._keks
            self._signing_keys = fresh._signing_keys
            self._stamp = stamp

    def refresh(self) -> bool:
        """Reload if the keyring file changed since this process last read or saved it.

        Costs one `stat` when nothing changed. Returns True if keys were reloaded; a file
        that cannot be examined, or unsaved changes in memory, leave the keys as they are.
        """
        if self._unsaved:
            return False
        try:
            current = _stamp_of(os.stat(self._path))
        except OSError:
            return False
        if current == self._stamp:
            return False
        self.reload()
        return True

    def refresh_at_most_every(self, seconds: float) -> None:
        """``refresh()``, unless this process looked at the file less than ``seconds`` ago.

        For hot paths (every release is signed): a key rotated by another process is taken
        over within ``seconds``, at the cost of one `stat` per interval. A file that cannot
        be read or parsed leaves the keys in memory as they are.
        """
        now = time.monotonic()
        if now - self._checked_at < seconds:
            return
        self._checked_at = now
        try:
            self.refresh()
        except KeyringError:
            pass

    # -- key-encryption keys -----------------------------------------------------------

    @property
    def path(self) -> Path:
        """Where this keyring is saved."""
        return self._path

    @property
    def is_protected(self) -> bool:
        """True when the key material is stored encrypted under a passphrase."""
        return self._protection is not None

    @property
    def primary_kek_id(self) -> str:
        """Id of the KEK that wraps every newly sealed data key."""
        return next(k.id for k in self._keks if k.status == "primary")

    def kek_ids(self) -> list[str]:
        """Ids of every KEK held, primary and active, oldest first."""
        return [k.id for k in self._keks]

    def wrap(self, kek_id: str, nonce: bytes, data_key: bytes, associated_data: bytes) -> bytes:
        """``data_key`` encrypted (AES-256-GCM, tag appended) under the KEK ``kek_id``.

        `UnknownKey` if the keyring does not hold that KEK. The nonce must never repeat
        under one KEK: the envelope draws a fresh random one for every wrap.
        """
        return AESGCM(self._find_kek(kek_id).key).encrypt(nonce, data_key, associated_data)

    def unwrap(self, kek_id: str, nonce: bytes, wrapped: bytes, associated_data: bytes) -> bytes:
        """The data key that `wrap` encrypted; `UnknownKey` if the keyring does not hold the
        KEK, `cryptography.exceptions.InvalidTag` if the wrapping or its associated data
        was altered."""
        return AESGCM(self._find_kek(kek_id).key).decrypt(nonce, wrapped, associated_data)

    def describe_keks(self) -> list[dict[str, str]]:
        """Id, status and creation time of every KEK, for display; no key bytes."""
        return [{"id": k.id, "status": k.status, "created": k.created} for k in self._keks]

    def add_kek(self) -> str:
        """Add a fresh KEK and make it primary; the former primary stays active.

        Blobs wrapped under the former primary keep opening until they are rewrapped and
        the old KEK is removed.
        """
        for kek in self._keks:
            if kek.status == "primary":
                kek.status = "active"
        key_id = _new_id("kek", set(self.kek_ids()))
        self._unsaved = True
        self._keks.append(_Kek(key_id, "primary", _now(), AESGCM.generate_key(256)))
        return key_id

    def remove_kek(self, key_id: str) -> None:
        """Drop a KEK that is no longer needed; the primary KEK cannot be removed.

        Whatever is still wrapped under the removed key can no longer be opened, so call
        this only after every blob under it has been rewrapped.
        """
        kek = self._find_kek(key_id)
        if kek.status == "primary":
            raise KeyringError(
                f"{key_id} is the primary key-encryption key; add a new one before removing it"
            )
        self._unsaved = True
        self._keks.remove(kek)

    # -- signing keys ------------------------------------------------------------------

    @property
    def signing_key_id(self) -> str:
        """Id of the current signing key, which signs every new release."""
        return next(k.id for k in self._signing_keys if k.status == "current")

    def sign(self, data: bytes) -> tuple[str, bytes]:
        """The Ed25519 signature of ``data`` by the current signing key, and that key's id.

        Id and signature come from one key even while `reload` swaps in a rotated set.
        """
        current = next(k for k in self._signing_keys if k.status == "current")
        return current.id, Ed25519PrivateKey.from_private_bytes(current.private).sign(data)

    def public_signing_keys(self) -> list[dict[str, str]]:
        """Every signing key's public half, current and retired, as `GET /v1/signing-keys`
        publishes it: key_id, alg, public_key (base64 of the raw 32 bytes), status.

        The file is checked first (one `stat`): a signing key rotated by another process is
        published at once, since another worker may already sign with it. If the file
        cannot be read, the keys already held are published, never fewer.
        """
        try:
            self.refresh()
        except KeyringError:
            pass
        published = []
        for key in self._signing_keys:
            public = Ed25519PrivateKey.from_private_bytes(key.private).public_key()
            published.append(
                {
                    "key_id": key.id,
                    "alg": "Ed25519",
                    "public_key": _b64(public.public_bytes_raw()),
                    "status": key.status,
                }
            )
        return published

    def rotate_signing_key(self) -> str:
        """Make a fresh signing key current; the old one is retired but still published,
        so releases it signed keep verifying."""
        for key in self._signing_keys:
            if key.status == "current":
                key.status = "retired"
        key_id = _new_id("sig", {k.id for k in self._signing_keys})
        private = Ed25519PrivateKey.generate().private_bytes_raw()
        self._unsaved = True
        self._signing_keys.append(_SigningKey(key_id, "current", _now(), private))
        return key_id

    # -- audit key ---------------------------------------------------------------------

    @property
    def audit_key_id(self) -> str:
        """Id of the audit HMAC key."""
        return self._audit_key.id

    def audit_mac(self, data: bytes) -> bytes:
        """HMAC-SHA-256 of ``data`` under the audit key: the link of the audit chain."""
        h = hmac.HMAC(self._audit_key.key, hashes.SHA256())
        h.update(data)
        return h.finalize()

    # -- keys derived for one purpose --------------------------------------------------

    def derive(self, label: str) -> bytes:
        """A 256-bit key for the one purpose that ``label`` names, derived from the audit
        key with HKDF-SHA-256 (``label`` is HKDF's info).

        Keys for different labels are independent of each other and of the audit chain's
        key. The audit key never rotates (a reload refuses another one), so a derived key
        stays the same for the life of a deployment, on every worker and instance.
        """
        return HKDF(
            algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=label.encode("utf-8")
        ).derive(self._audit_key.key)

    def mac(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA-256 of ``data`` under the key derived for ``label``.

        A keyed digest, not a plain hash: without the key, a short input (a small CSV, a
        pseudonym) cannot be found by hashing guesses and comparing.
        """
        h = hmac.HMAC(self.derive(label), hashes.SHA256())
        h.update(data)
        return h.finalize()

    # -- persistence -------------------------------------------------------------------

    def save(self) -> None:
        """Write the keyring back to its path atomically, keeping passphrase protection.

        The new content goes to a 0600 temporary file in the same directory, is fsynced,
        and replaces the old file in one rename: a reader or a crash sees the old keyring
        or the new one, never half of either.
        """
        data = self._serialize()
        directory = self._path.parent
        temporary = directory / f".{self._path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self._path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            _fsync_directory(directory)
            # What this process wrote is what it holds: no reload needed for it.
            self._stamp = _stamp_of(os.stat(self._path))
            self._unsaved = False
        except OSError as exc:
            raise KeyringError(f"cannot save keyring {self._path}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return (
            f"Keyring(path={str(self._path)!r}, primary_kek={self.primary_kek_id!r}, "
            f"keks={self.kek_ids()!r}, signing_key={self.signing_key_id!r}, "
            f"audit_key={self.audit_key_id!r}, protected={self.is_protected})"
        )

    # -- internals ---------------------------------------------------------------------

    def _find_kek(self, key_id: str) -> _Kek:
        for kek in self._keks:
            if kek.id == key_id:
                return kek
        raise UnknownKey(f"no key-encryption key {key_id} in the keyring")

    def _metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "keks": self.describe_keks(),
            "signing_keys": [
                {"id": k.id, "status": k.status, "created": k.created} for k in self._signing_keys
            ],
            "audit_key": {"id": self._audit_key.id, "created": self._audit_key.created},
        }

    def _secrets(self) -> dict[str, Any]:
        return {
            "keks": {k.id: _b64(k.key) for k in self._keks},
            "signing_keys": {k.id: _b64(k.private) for k in self._signing_keys},
            "audit_key": _b64(self._audit_key.key),
        }

    def _serialize(self) -> bytes:
        document = self._metadata()
        if self._protection is None:
            document["protection"] = None
            document["secrets"] = self._secrets()
        else:
            nonce = os.urandom(_NONCE_BYTES)
            document["protection"] = {
                "kdf": "scrypt",
                "n": self._protection.n,
                "r": self._protection.r,
                "p": self._protection.p,
                "salt": _b64(self._protection.salt),
                "cipher": "AES-256-GCM",
                "nonce": _b64(nonce),
            }
            sealed = AESGCM(self._protection.key).encrypt(
                nonce, canonical_json(self._secrets()), _associated_data(document)
            )
            document["secrets"] = _b64(sealed)
        return json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def _parse(
        cls, path: Path, document: object, passphrase: str | None, known: _Protection | None
    ) -> Keyring:
        document = _mapping(document, "the document")
        if type(document.get("format")) is not int or document["format"] != FORMAT:
            raise KeyringError(
                f"keyring {path} has format {document.get('format')!r}; "
                f"this dpx reads format {FORMAT}"
            )
        expected = {"format", "keks", "signing_keys", "audit_key", "protection", "secrets"}
        if set(document) != expected:
            raise _Malformed(f"top-level fields must be {', '.join(sorted(expected))}")

        keks = [_entry(item, "kek", ("primary", "active")) for item in _list(document, "keks")]
        signing = [
            _entry(item, "sig", ("current", "retired")) for item in _list(document, "signing_keys")
        ]
        audit = _mapping(document["audit_key"], "audit_key")
        audit_id = _string(audit, "id", "audit_key")
        audit_created = _string(audit, "created", "audit_key")
        if not _ID_PATTERNS["aud"].fullmatch(audit_id):
            raise _Malformed(f"audit_key.id {audit_id!r} is not aud-<8 hex digits>")
        if not _TIMESTAMP.fullmatch(audit_created):
            raise _Malformed("audit_key.created is not a UTC timestamp")
        _require_one(keks, "primary", "keks")
        _require_one(signing, "current", "signing_keys")

        protection: _Protection | None = None
        if document["protection"] is None:
            if passphrase is not None or known is not None:
                raise KeyringError(
                    f"keyring {path} is not passphrase-protected, but a passphrase was given"
                )
            secret_values = _mapping(document["secrets"], "secrets")
        else:
            if passphrase is None and known is None:
                raise KeyringError(f"keyring {path} is passphrase-protected; give its passphrase")
            protection, secret_values = _unseal_secrets(document, passphrase, known)

        kek_bytes = _secret_table(secret_values, "keks", [k[0] for k in keks])
        signing_bytes = _secret_table(secret_values, "signing_keys", [k[0] for k in signing])
        audit_key = _decode_key(secret_values.get("audit_key"), "secrets.audit_key")
        return cls(
            path,
            # _entry has checked every status against the Literal's values.
            keks=[_Kek(i, cast(KekStatus, s), c, kek_bytes[i]) for i, s, c in keks],
            signing_keys=[
                _SigningKey(i, cast(SigningKeyStatus, s), c, signing_bytes[i])
                for i, s, c in signing
            ],
            audit_key=_AuditKey(audit_id, audit_created, audit_key),
            protection=protection,
        )


# -- parsing, every fault a _Malformed naming the field ------------------------------------


def _associated_data(document: Mapping[str, Any]) -> bytes:
    """Everything but the sealed secrets, canonically: the metadata the ciphertext vouches for."""
    return canonical_json({name: value for name, value in document.items() if name != "secrets"})


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} must be an object")
    return value


def _list(document: Mapping[str, Any], name: str) -> list[Any]:
    value = document[name]
    if not isinstance(value, list) or not value:
        raise _Malformed(f"{name} must be a non-empty list")
    return value


def _string(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise _Malformed(f"{where}.{name} must be a string")
    return value


def _entry(item: object, prefix: str, statuses: tuple[str, ...]) -> tuple[str, str, str]:
    where = {"kek": "keks", "sig": "signing_keys"}[prefix]
    entry = _mapping(item, f"every entry of {where}")
    key_id = _string(entry, "id", where)
    if not _ID_PATTERNS[prefix].fullmatch(key_id):
        raise _Malformed(f"{where} id {key_id!r} is not {prefix}-<8 hex digits>")
    status = _string(entry, "status", f"{where}[{key_id}]")
    if status not in statuses:
        raise _Malformed(f"{where}[{key_id}].status {status!r} is not one of {statuses}")
    created = _string(entry, "created", f"{where}[{key_id}]")
    if not _TIMESTAMP.fullmatch(created):
        raise _Malformed(f"{where}[{key_id}].created is not a UTC timestamp")
    return key_id, status, created


def _require_one(entries: list[tuple[str, str, str]], status: str, where: str) -> None:
    if len({key_id for key_id, _, _ in entries}) != len(entries):
        raise _Malformed(f"{where} has duplicate ids")
    count = sum(1 for _, entry_status, _ in entries if entry_status == status)
    if count != 1:
        raise _Malformed(f"{where} must have exactly one {status} key, not {count}")


def _decode(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise _Malformed(f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _Malformed(f"{where} is not valid base64") from None


def _decode_key(value: object, where: str) -> bytes:
    key = _decode(value, where)
    if len(key) != _KEY_BYTES:
        raise _Malformed(f"{where} must hold {_KEY_BYTES} bytes")
    return key


def _secret_table(secret_values: Mapping[str, Any], name: str, ids: list[str]) -> dict[str, bytes]:
    table = _mapping(secret_values.get(name), f"secrets.{name}")
    if sorted(table) != sorted(ids):
        raise _Malformed(f"secrets.{name} must hold exactly the keys listed in {name}")
    return {key_id: _decode_key(table[key_id], f"secrets.{name}[{key_id}]") for key_id in ids}


def _integer(settings: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = settings.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Malformed(f"protection.{name} must be an integer in {low}..{high}")
    return value


def _unseal_secrets(
    document: Mapping[str, Any], passphrase: str | None, known: _Protection | None
) -> tuple[_Protection, dict[str, Any]]:
    """The secrets sealed in a protected document, and the protection that opened them:
    derived from `passphrase`, or `known` (derived earlier) when the file still uses its
    salt and parameters."""
    settings = _mapping(document["protection"], "protection")
    if settings.get("kdf") != "scrypt" or settings.get("cipher") != "AES-256-GCM":
        raise _Malformed("protection must use kdf scrypt and cipher AES-256-GCM")
    n = _integer(settings, "n", *_SCRYPT_N_RANGE)
    if n & (n - 1):
        raise _Malformed("protection.n must be a power of two")
    r = _integer(settings, "r", 1, _SCRYPT_R_MAX)
    p = _integer(settings, "p", 1, _SCRYPT_P_MAX)
    if 128 * n * r > _SCRYPT_MEMORY_MAX:
        raise _Malformed(f"protection n={n}, r={r} needs more than 256 MiB of memory")
    salt = _decode(settings.get("salt"), "protection.salt")
    nonce = _decode(settings.get("nonce"), "protection.nonce")
    if len(salt) < _SALT_BYTES or len(nonce) != _NONCE_BYTES:
        raise _Malformed("protection.salt or protection.nonce has the wrong length")
    sealed = _decode(document["secrets"], "secrets")
    if known is not None and (known.salt, known.n, known.r, known.p) == (salt, n, r, p):
        protection = known
    elif passphrase is not None:
        protection = _Protection.derive(passphrase, salt, n, r, p)
    else:
        raise KeyringError(_UNSEAL_FAILED)
    try:
        plaintext = AESGCM(protection.key).decrypt(nonce, sealed, _associated_data(document))
    except InvalidTag:
        # One message for both causes: telling them apart would need the key we lack.
        raise KeyringError(_UNSEAL_FAILED) from None
    try:
        secret_values = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Malformed("the sealed secrets are not a JSON document") from None
    return protection, _mapping(secret_values, "secrets")


def _fsync_directory(directory: Path) -> None:
    """Make a create or rename in `directory` durable, not only the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp_of(info: os.stat_result) -> _Stamp:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _read(path: Path) -> tuple[bytes, _Stamp]:
    """The bytes of a keyring file and the stamp of that version; `KeyringError` if it is
    missing, not a regular file, or open to anyone but its owner."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyringError(f"keyring {path} does not exist; create one with `dpx init`") from None
    except OSError as exc:
        raise KeyringError(f"cannot read keyring {path}: {exc.strerror}") from None
    try:
        # fstat on the open file, not a second stat of the path: the mode checked is
        # the mode of the bytes read.
        info = os.fstat(fd)
        stamp = _stamp_of(info)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"keyring {path} is not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise KeyringError(
                f"keyring {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            raw = file.read()
    except OSError as exc:
        raise KeyringError(f"cannot read keyring {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return raw, stamp
