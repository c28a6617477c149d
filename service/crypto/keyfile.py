"""The keyring file: its format, how it is validated, and how it is read and written.

One versioned JSON document, mode 0600, holds every long-lived key of a deployment. This
module knows its layout, refuses a file that is missing, malformed, altered or open to other
users, seals the secrets under a passphrase, and writes the file without a moment at which it
is half-written or readable by anyone else. What the keys are used for is `keyring.py`'s.

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
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from service.crypto.errors import KeyringError
from service.crypto.signing import canonical_json

FORMAT = 1

KekStatus = Literal["primary", "active"]
SigningKeyStatus = Literal["current", "retired"]

# Every symmetric key (KEK, audit HMAC key) is 256 bits; Ed25519 private keys are 32 raw bytes.
KEY_BYTES = 32
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

# What identifies one version of the keyring file: `replace` always writes a new file and
# renames it into place, so the inode changes with every save.
Stamp = tuple[int, int, int, int]


@dataclass
class Kek:
    id: str
    status: KekStatus
    created: str
    key: bytes = field(repr=False)


@dataclass
class SigningKey:
    id: str
    status: SigningKeyStatus
    created: str
    private: bytes = field(repr=False)

    @cached_property
    def signer(self) -> Ed25519PrivateKey:
        """The private key as a `cryptography` object, built once: building it costs about
        as much as a signature."""
        return Ed25519PrivateKey.from_private_bytes(self.private)


@dataclass(frozen=True)
class AuditKey:
    id: str
    created: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Protection:
    """Passphrase protection: the Scrypt parameters and the key they derived.

    The derived key, not the passphrase, is kept in memory so that a save can encrypt
    again without asking for the passphrase; each save uses a fresh random nonce.
    """

    salt: bytes
    n: int
    r: int
    p: int
    key: bytes = field(repr=False)

    @classmethod
    def new(cls, passphrase: str) -> Protection:
        """Protection for a new keyring: a fresh salt and the current Scrypt cost."""
        return cls.derive(passphrase, os.urandom(_SALT_BYTES), _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)

    @classmethod
    def derive(cls, passphrase: str, salt: bytes, n: int, r: int, p: int) -> Protection:
        kdf = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p)
        return cls(salt=salt, n=n, r=r, p=p, key=kdf.derive(passphrase.encode("utf-8")))


@dataclass(frozen=True)
class Contents:
    """Everything one keyring file holds."""

    keks: list[Kek]
    signing_keys: list[SigningKey]
    audit_key: AuditKey
    protection: Protection | None


class _Malformed(Exception):
    """A structural fault in the keyring file; becomes a KeyringError naming the file."""


def now() -> str:
    """The current time as the file records a key's creation: a UTC timestamp to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str, taken: set[str]) -> str:
    """A fresh key id, ``<prefix>-<8 hex digits>``, that is not in ``taken``."""
    while True:
        key_id = f"{prefix}-{secrets.token_hex(4)}"
        if key_id not in taken:
            return key_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- reading ---------------------------------------------------------------------------


def read(
    path: Path, passphrase: str | None = None, known: Protection | None = None
) -> tuple[Contents, Stamp]:
    """The keys in the file at ``path`` and the stamp of the version read.

    A protected file is unsealed with ``passphrase``, or with ``known`` (the protection
    derived when the file was first read) while the file keeps its salt and parameters.
    Every failure is a `KeyringError` whose message names the file and says what would
    be right; no message ever contains key bytes.
    """
    raw, stamp = _read_private_file(path)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyringError(f"keyring {path} is malformed: not a JSON document") from None
    try:
        return _parse(path, document, passphrase, known), stamp
    except _Malformed as exc:
        raise KeyringError(f"keyring {path} is malformed: {exc}") from None


def stamp_of(path: Path) -> Stamp:
    """The stamp of the file now at ``path``; `OSError` if it cannot be examined."""
    return _stamp(os.stat(path))


def _stamp(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _read_private_file(path: Path) -> tuple[bytes, Stamp]:
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
        stamp = _stamp(info)
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


# -- writing ---------------------------------------------------------------------------


def create(path: Path, contents: Contents) -> Stamp:
    """Write a new keyring file at ``path``; `KeyringError` if one is there already.

    The file is created with mode 0600 from the first byte (never widened and narrowed
    afterwards) and is never overwritten.
    """
    data = _serialize(contents)
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
        return stamp_of(path)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyringError(f"cannot write keyring {path}: {exc.strerror}") from None


def replace(path: Path, contents: Contents) -> Stamp:
    """Replace the keyring file at ``path`` atomically; the stamp of the version written.

    The new content goes to a 0600 temporary file in the same directory, is fsynced,
    and replaces the old file in one rename: a reader or a crash sees the old keyring
    or the new one, never half of either.
    """
    data = _serialize(contents)
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
        return stamp_of(path)
    except OSError as exc:
        raise KeyringError(f"cannot save keyring {path}: {exc.strerror}") from None


def _fsync_directory(directory: Path) -> None:
    """Make a create or rename in `directory` durable, not only the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _serialize(contents: Contents) -> bytes:
    document: dict[str, Any] = {
        "format": FORMAT,
        "keks": [{"id": k.id, "status": k.status, "created": k.created} for k in contents.keks],
        "signing_keys": [
            {"id": k.id, "status": k.status, "created": k.created} for k in contents.signing_keys
        ],
        "audit_key": {"id": contents.audit_key.id, "created": contents.audit_key.created},
    }
    secret_values = {
        "keks": {k.id: _b64(k.key) for k in contents.keks},
        "signing_keys": {k.id: _b64(k.private) for k in contents.signing_keys},
        "audit_key": _b64(contents.audit_key.key),
    }
    protection = contents.protection
    if protection is None:
        document["protection"] = None
        document["secrets"] = secret_values
    else:
        nonce = os.urandom(_NONCE_BYTES)
        document["protection"] = {
            "kdf": "scrypt",
            "n": protection.n,
            "r": protection.r,
            "p": protection.p,
            "salt": _b64(protection.salt),
            "cipher": "AES-256-GCM",
            "nonce": _b64(nonce),
        }
        sealed = AESGCM(protection.key).encrypt(
            nonce, canonical_json(secret_values), _associated_data(document)
        )
        document["secrets"] = _b64(sealed)
    return json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"


# -- parsing, every fault a _Malformed naming the field ------------------------------------


def _parse(
    path: Path, document: object, passphrase: str | None, known: Protection | None
) -> Contents:
    document = _mapping(document, "the document")
    if type(document.get("format")) is not int or document["format"] != FORMAT:
        raise KeyringError(
            f"keyring {path} has format {document.get('format')!r}; this dpx reads format {FORMAT}"
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

    protection: Protection | None = None
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
    return Contents(
        # _entry has checked every status against the Literal's values.
        keks=[Kek(i, cast(KekStatus, s), c, kek_bytes[i]) for i, s, c in keks],
        signing_keys=[
            SigningKey(i, cast(SigningKeyStatus, s), c, signing_bytes[i]) for i, s, c in signing
        ],
        audit_key=AuditKey(audit_id, audit_created, audit_key),
        protection=protection,
    )


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
    if len(key) != KEY_BYTES:
        raise _Malformed(f"{where} must hold {KEY_BYTES} bytes")
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
    document: Mapping[str, Any], passphrase: str | None, known: Protection | None
) -> tuple[Protection, dict[str, Any]]:
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
        protection = Protection.derive(passphrase, salt, n, r, p)
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
