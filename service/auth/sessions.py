"""Dashboard sessions: a bearer token traded, once, for a server-side session.

The browser keeps only a random session id (in a cookie signed with a key derived from the
keyring, so every worker and instance accepts it); the database keeps the id's SHA-256, the
principal, a CSRF token and an expiry. Looking a session up re-checks the token it was
opened with, so revoking a token ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select

from service.audit.log import AuditLog
from service.auth.registry import Principal
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.schema import sessions, tokens

SESSION_LIFETIME = timedelta(hours=8)


def session_secret(keyring: Keyring) -> bytes:
    """The key that signs dashboard cookies, derived from the keyring's audit key.

    HKDF with its own label gives a key independent of the audit chain's; deriving it from
    the keyring (rather than a per-machine file) lets every worker and every instance that
    mounts the same keyring accept the same cookies, and nothing secret sits in the code.
    """
    return keyring.derive("dpx dashboard session cookie v1")


@dataclass(frozen=True)
class SignedIn:
    """A live dashboard session: who signed in and the CSRF token of its forms."""

    principal: Principal
    csrf_token: str


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class DashboardSessions:
    """Sessions in the database, shared by every worker; only hashed ids are stored."""

    def __init__(self, database: Database, audit: AuditLog) -> None:
        self.database = database
        self.audit = audit

    def open(self, principal: Principal) -> str:
        """Start a session for ``principal`` and return its id (to be kept by the browser)."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.database.write() as conn:
            self._purge(conn, now)
            conn.execute(
                sessions.insert().values(
                    id_hash=_session_hash(session_id),
                    token_id=principal.token_id,
                    role=principal.role,
                    subject=principal.subject,
                    csrf_token=secrets.token_urlsafe(32),
                    created_at=now,
                    expires_at=now + SESSION_LIFETIME,
                )
            )
            self.audit.append(conn, actor=principal.actor, action="dashboard.sign_in")
        return session_id

    def find(self, session_id: str) -> SignedIn | None:
        """The live session with this id: unexpired, and its token neither revoked nor expired."""
        now = datetime.now(UTC)
        query = (
            select(sessions.c.token_id, sessions.c.role, sessions.c.subject, sessions.c.csrf_token)
            .join(tokens, tokens.c.id == sessions.c.token_id)
            .where(
                sessions.c.id_hash == _session_hash(session_id),
                sessions.c.expires_at > now,
                or_(tokens.c.revoked_at.is_(None), tokens.c.revoked_at > now),
                or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
            )
        )
        with self.database.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return SignedIn(Principal(row.token_id, row.role, row.subject), row.csrf_token)

    def close(self, session_id: str, principal: Principal) -> None:
        """End the session now; its cookie is worthless afterwards."""
        with self.database.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id_hash == _session_hash(session_id)))
            self.audit.append(conn, actor=principal.actor, action="dashboard.sign_out")

    @staticmethod
    def _purge(conn: Any, now: datetime) -> None:
        revoked = select(tokens.c.id).where(tokens.c.revoked_at <= now)
        conn.execute(
            delete(sessions).where(
                or_(sessions.c.expires_at <= now, sessions.c.token_id.in_(revoked))
            )
        )
