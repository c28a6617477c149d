"""The keyring: every long-lived key of a dpx deployment, found by id, used and never handed out.

It holds the key-encryption keys (KEKs) that wrap the data key of every stored batch, the
Ed25519 keys that sign releases, and the HMAC key that chains the audit log. Keys are found
by id, so old ones keep working while new ones take over (rotation without downtime).

Keys are used here, never handed out: other modules ask the keyring to `wrap` or `unwrap` a
data key, to `sign`, to `audit_mac`, or to `mac` under a key derived for one purpose, and no
method returns the bytes of a key it holds. `derive` alone returns key bytes: a subkey for
one named purpose, for a library that must hold its own key (Flask's cookie signer).

The keys live in one 0600 file whose format, validation and atomic writing are `keyfile.py`'s.
Mutating methods (`add_kek`, `remove_kek`, `rotate_signing_key`) change the keyring in
memory; `save()` writes it back. A long-running process takes over keys that another
process saved (a key rotation run by `dpx`) with `reload()`, or with `refresh()` when the
file changed since this process last read or wrote it.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.crypto import keyfile
from service.crypto.errors import KeyringError, UnknownKey
from service.crypto.keyfile import KEY_BYTES, AuditKey, Contents, Kek, Protection, SigningKey


class Keyring:
    """Versioned keys by id, loaded from and saved to one 0600 file.

    Build one with `Keyring.create` or `Keyring.load`; the constructor is for those two.
    """

    def __init__(self, path: Path, contents: Contents, stamp: keyfile.Stamp) -> None:
        self._path = Path(path)
        self._keks = contents.keks
        self._signing_keys = contents.signing_keys
        self._audit_key = contents.audit_key
        self._protection = contents.protection
        self._stamp = stamp
        # Set by add_kek, remove_kek and rotate_signing_key, cleared by save(): unsaved
        # changes are never silently replaced by the file's keys.
        self._unsaved = False
        self._reload_lock = threading.Lock()
        self._check_lock = threading.Lock()
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
        created = keyfile.now()
        contents = Contents(
            keks=[Kek(keyfile.new_id("kek", set()), "primary", created, _new_symmetric_key())],
            signing_keys=[
                SigningKey(keyfile.new_id("sig", set()), "current", created, _new_signing_key())
            ],
            audit_key=AuditKey(keyfile.new_id("aud", set()), created, _new_symmetric_key()),
            protection=None if passphrase is None else Protection.new(passphrase),
        )
        return cls(path, contents, keyfile.create(path, contents))

    @classmethod
    def load(cls, path: Path, passphrase: str | None = None) -> Keyring:
        """Read a keyring, refusing one that is missing, malformed, altered or not 0600.

        Every failure is a `KeyringError` whose message names the file and says what would
        be right; no message ever contains key bytes.
        """
        path = Path(path)
        contents, stamp = keyfile.read(path, passphrase)
        return cls(path, contents, stamp)

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
            fresh, stamp = keyfile.read(self._path, known=self._protection)
            if fresh.audit_key.id != self._audit_key.id:
                raise KeyringError(
                    f"keyring {self._path} now holds audit key {fresh.audit_key.id}, not "
                    f"{self._audit_key.id}; restart the service to use it"
                )
            # Whole lists are swapped, never edited in place, so a thread reading keys
            # concurrently sees the old set or the new one.
            self._keks = fresh.keks
            self._signing_keys = fresh.signing_keys
            self._stamp = stamp

    def refresh(self) -> bool:
        """Reload if the keyring file changed since this process last read or saved it.

        Costs one `stat` when nothing changed. Returns True if keys were reloaded; a file
        that cannot be examined, or unsaved changes in memory, leave the keys as they are.
        """
        if self._unsaved:
            return False
        try:
            current = keyfile.stamp_of(self._path)
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
        # One thread looks while the others wait: a thread that skipped the look because
        # another had just begun it would sign with the old key while the new one loads.
        with self._check_lock:
            if time.monotonic() - self._checked_at < seconds:
                return
            try:
                self.refresh()
            except KeyringError:
                pass
            self._checked_at = time.monotonic()

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
        key_id = keyfile.new_id("kek", set(self.kek_ids()))
        self._unsaved = True
        self._keks.append(Kek(key_id, "primary", keyfile.now(), _new_symmetric_key()))
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
        return current.id, current.signer.sign(data)

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
            public = key.signer.public_key()
            published.append(
                {
                    "key_id": key.id,
                    "alg": "Ed25519",
                    "public_key": base64.b64encode(public.public_bytes_raw()).decode("ascii"),
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
        key_id = keyfile.new_id("sig", {k.id for k in self._signing_keys})
        self._unsaved = True
        self._signing_keys.append(SigningKey(key_id, "current", keyfile.now(), _new_signing_key()))
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
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label.encode("utf-8")
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
        contents = Contents(self._keks, self._signing_keys, self._audit_key, self._protection)
        # What this process wrote is what it holds: no reload needed for it.
        self._stamp = keyfile.replace(self._path, contents)
        self._unsaved = False

    def __repr__(self) -> str:
        return (
            f"Keyring(path={str(self._path)!r}, primary_kek={self.primary_kek_id!r}, "
            f"keks={self.kek_ids()!r}, signing_key={self.signing_key_id!r}, "
            f"audit_key={self.audit_key_id!r}, protected={self.is_protected})"
        )

    # -- internals ---------------------------------------------------------------------

    def _find_kek(self, key_id: str) -> Kek:
        for kek in self._keks:
            if kek.id == key_id:
                return kek
        raise UnknownKey(f"no key-encryption key {key_id} in the keyring")


def _new_symmetric_key() -> bytes:
    """A fresh 256-bit key for AES-256-GCM (a KEK) or HMAC-SHA-256 (the audit key)."""
    return secrets.token_bytes(KEY_BYTES)


def _new_signing_key() -> bytes:
    """The raw 32 bytes of a fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate().private_bytes_raw()
