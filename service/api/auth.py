"""Bearer-token authentication for views: one lookup per request, roles checked by name."""

from __future__ import annotations

from flask import current_app, g, request

from service.auth.registry import Principal, Role, TokenRegistry
from service.exchange import Forbidden


def principal() -> Principal:
    """The authenticated caller of this request, or ``Unauthenticated`` (401)."""
    cached: Principal | None = g.get("principal")
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    registry: TokenRegistry = current_app.extensions["dpx.tokens"]
    found = registry.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    g.principal = found
    return found


def require(*roles: Role) -> Principal:
    """The caller, if its role is one of ``roles``; otherwise ``Forbidden`` (403)."""
    caller = principal()
    if caller.role not in roles:
        raise Forbidden(f"this needs a {' or '.join(roles)} token")
    return caller
