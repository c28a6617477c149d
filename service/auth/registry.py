"""Issue, revoke, rotate, list and check bearer tokens.

A token is shown once, when it is issued; the database keeps only its SHA-256. Every way a
token can be wrong (missing, malformed, unknown, revoked, expired) ends in the same
``Unauthenticated`` error, so a caller learns nothing from which one it was.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, case, or_, select, update

from service.audit.log import AuditLog
from service.crypto.tokens import looks_like_token, new_token, token_hash, token_prefix
from service.database.engine import Database
from service.database.schema import tokens
from service.database.timestamps import as_utc

Role = Literal["partner", "owner", "dpo"]
ROLES: tuple[Role, ...] = ("partner", "owner", "dpo")


class Unauthenticated(Exception):
    """No valid token; deliberately carries no detail."""


class TokenNotFound(LookupError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no active token with id {token_id}")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a role and what it speaks for (partner id, dataset id)."""

    token_id: str
    role: Role
    subject: str | None

    @property
    def actor(self) -> str:
        """How the audit log names this caller (never the token itself)."""
        return f"{self.role}:{self.subject or '-'}:{self.token_id}"


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    token: str
    role: Role
    subject: str | None


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    prefix: str
    role: str
    subject: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None else as_utc(at)


def _live(at: Any) -> ColumnElement[bool]:
    """Not revoked as of ``at``: never revoked, or only from a later time on (a rotated
    token in its grace period)."""
    return or_(tokens.c.revoked_at.is_(None), tokens.c.revoked_at > at)


class TokenRegistry:
    def __init__(self, database: Database, audit: AuditLog) -> None:
        self.database = database
        self.audit = audit

    def issue(self, role: Role, subject: str | None, *, actor: str = "admin:cli") -> IssuedToken:
        """Create a token for ``role`` (and partner or dataset ``subject``); store only its hash."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if (role == "dpo") != (subject is None):
            raise ValueError("a dpo token has no subject; partner and owner tokens need one")
        token = new_token()
        token_id = "tok_" + secrets.token_hex(8)
        with self.database.write() as conn:
            conn.execute(
                tokens.insert().values(
                    id=token_id,
                    token_hash=token_hash(token),
                    prefix=token_prefix(token),
                    role=role,
                    subject=subject,
                    created_at=_now(),
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="token.issue",
                details={"token_id": token_id, "role": role, "subject": subject},
            )
        return IssuedToken(token_id, token, role, subject)

    def revoke(
        self, token_id: str, *, actor: str = "admin:cli", at: datetime | None = None
    ) -> None:
        """Revoke now (or at ``at``, for a grace period); ids of tokens no longer live are an
        error. A token in its grace period is live: revoking it again ends it sooner (a
        rotated token found leaked), never later."""
        now = _now()
        ends = at or now
        with self.database.write() as conn:
            effective = conn.execute(
                update(tokens)
                .where(tokens.c.id == token_id, _live(now))
                .values(revoked_at=case((_live(ends), ends), else_=tokens.c.revoked_at))
                .returning(tokens.c.revoked_at)
            ).scalar_one_or_none()
            if effective is None:
                raise TokenNotFound(token_id)
            self.audit.append(
                conn,
                actor=actor,
                action="token.revoke",
                details={"token_id": token_id, "effective": as_utc(effective).isoformat()},
            )

    def rotate(self, token_id: str, *, grace: timedelta, actor: str = "admin:cli") -> IssuedToken:
        """Issue a replacement with the same role; the old token works for ``grace`` more."""
        with self.database.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id, _live(_now()))).first()
        if row is None:
            raise TokenNotFound(token_id)
        issued = self.issue(row.role, row.subject, actor=actor)
        self.revoke(token_id, actor=actor, at=_now() + grace)
        return issued

    # Run on every request: built once, since building a statement costs more than running it.
    _LIVE_TOKEN = select(tokens).where(
        tokens.c.token_hash == bindparam("token_hash"),
        _live(bindparam("now")),
        or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > bindparam("now")),
    )

    def authenticate(self, presented: str | None) -> Principal:
        """The principal for a presented token, or ``Unauthenticated``."""
        if not presented or not looks_like_token(presented):
            raise Unauthenticated()
        now = _now()
        with self.database.read() as conn:
            row = conn.execute(
                self._LIVE_TOKEN, {"token_hash": token_hash(presented), "now": now}
            ).first()
        if row is None:
            raise Unauthenticated()
        last = _aware(row.last_used_at)
        # Coarse last-used stamps: one write a minute per token, not one per request.
        if last is None or now - last > timedelta(minutes=1):
            with self.database.write() as conn:
                conn.execute(
                    update(tokens).where(and_(tokens.c.id == row.id)).values(last_used_at=now)
                )
        return Principal(row.id, row.role, row.subject)

    def list(self) -> list[TokenInfo]:
        with self.database.read() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.created_at)).all()
        return [
            TokenInfo(
                r.id,
                r.prefix,
                r.role,
                r.subject,
                _aware(r.created_at) or _now(),
                _aware(r.last_used_at),
                _aware(r.expires_at),
                _aware(r.revoked_at),
            )
            for r in rows
        ]
