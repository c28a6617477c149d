"""Bearer-token authentication for views: one lookup per request, roles checked by name.

A view marked with ``@allowed(...)`` is guarded before Flask or flask-smorest reads its
body or parses its arguments: a caller without a valid token of an allowed role gets 401
or 403 and never a validation message, and a large body is never read for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from service.auth.registry import Principal, Role, TokenRegistry
from service.exchange import Forbidden

V = TypeVar("V", bound=Callable[..., Any])

_ROLES = "dpx_roles"


def principal() -> Principal:
    """The authenticated caller of this request, or ``Unauthenticated`` (401)."""
    cached: Principal | None = g.get("principal")
    if cached is not None:
        return cached
    registry: TokenRegistry = current_app.extensions["dpx.tokens"]
    found = registry.authenticate(presented_token())
    g.principal = found
    return found


def presented_token() -> str | None:
    """The bearer token of this request as sent, unchecked (None without one)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def require(*roles: Role) -> Principal:
    """The caller, if its role is one of ``roles``; otherwise ``Forbidden`` (403)."""
    caller = principal()
    if caller.role not in roles:
        raise Forbidden(f"this needs a {' or '.join(roles)} token")
    return caller


def allowed(*roles: Role) -> Callable[[V], V]:
    """Mark a view as needing a token of one of ``roles``, checked before anything is parsed."""

    def mark(view: V) -> V:
        setattr(view, _ROLES, roles)
        return view

    return mark


def checks_bearer_token() -> bool:
    """True when the view that will answer this request is marked ``@allowed``: the
    requests on which a bearer token is checked (and can be guessed)."""
    return view_mark(_ROLES) is not None


def view_mark(name: str) -> Any:
    """A mark (``allowed``, a body limit) of the view that will answer this request, or None.

    Marks sit on the view method under flask-smorest's decorators, which keep the
    ``__wrapped__`` chain, so the chain is searched from the outside in.
    """
    endpoint = request.endpoint
    view: Any = current_app.view_functions.get(endpoint) if endpoint else None
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = request.method.lower()
        view = getattr(view_class, "get" if method == "head" else method, None)
    while view is not None:
        if hasattr(view, name):
            return getattr(view, name)
        view = getattr(view, "__wrapped__", None)
    return None


def register_authentication(app: Flask) -> None:
    """Authenticate and check the role of every marked view before its body is read."""

    @app.before_request
    def authenticate_first() -> None:
        roles = view_mark(_ROLES)
        if roles is not None:
            require(*roles)
