"""The HTML dashboard: budgets over time, releases and their charts, refusals, expiring grants.

Server-rendered (Jinja2, autoescaped) with inline SVG charts from ``service.api.charts``; it
needs no JavaScript and no network. It shows only what the API already shows its caller:
releases (already differentially private) and budget and audit metadata — never a raw
value. A DPO sees every partner; a partner sees its own grants and releases.

Signing in trades a bearer token, posted in a form body (never a URL), for a server-side
session. The browser's cookie holds only a random session id, signed with a key derived
from the keyring so that every worker and instance accepts it; the database keeps only the
id's SHA-256, the principal, a CSRF token and an expiry. Each request re-checks the token
the session was opened with, so revoking a token ends its sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from service.api.burndowns import (
    budget_changes_since,
    burndown_charts,
    exact_budgets,
    window_start,
)
from service.api.charts import Bar, Line, band_chart, bar_chart, value_range
from service.audit.log import AuditLog
from service.auth.registry import TokenRegistry, Unauthenticated
from service.auth.sessions import DashboardSessions, SignedIn
from service.exchange import Exchange, Forbidden, NotFound
from service.policy.model import BUDGET_UNITS

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

EXPIRY_WARNING = timedelta(days=60)
REFUSALS_SINCE = timedelta(days=30)
RECENT = 20
MAX_RELEASE_LINES = 7
MAX_RELEASE_PANELS = 12
SIGN_IN_FAILED = "That token cannot sign in to the dashboard."
# Everything the pages load comes from this service; nothing may frame them.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

View = TypeVar("View", bound=Callable[..., Any])


# -- the session cookie --------------------------------------------------------------------


class SessionCookie(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure when configured or when the request is https.

    Only the dashboard's requests open one: every other request gets Flask's null session,
    which cannot be written to, and builds no signer.
    """

    def open_session(self, app: Flask, incoming: Request) -> SecureCookieSession | None:
        if not incoming.path.startswith(app.config["SESSION_COOKIE_PATH"]):
            return self.make_null_session(app)
        return super().open_session(app, incoming)

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(app.config["SESSION_COOKIE_SECURE"])
        return configured or (has_request_context() and request.is_secure)


def _store() -> DashboardSessions:
    return DashboardSessions(
        current_app.extensions["dpx.database"], current_app.extensions["dpx.audit"]
    )


def _exchange() -> Exchange:
    exchange: Exchange = current_app.extensions["dpx.exchange"]
    return exchange


def _check_csrf(expected: str | None) -> None:
    offered = request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(offered.encode(), expected.encode()):
        abort(
            400,
            "This form has expired or did not come from this dashboard. "
            "Reload the page and try again.",
        )


def signed_in(view: View) -> View:
    """Run ``view`` for a live session (``g.signed_in``); otherwise go to the sign-in page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session_id = session.get("sid")
        found = _store().find(session_id) if isinstance(session_id, str) else None
        if found is None or found.principal.role not in ("dpo", "partner"):
            session.clear()
            return redirect(url_for("dashboard.sign_in"), code=303)
        g.signed_in = found
        return view(*args, **kwargs)

    return cast(View, wrapper)


@bp.after_request
def security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    return _error_page(status, error.description or error.name), status


@bp.errorhandler(NotFound)
def not_found(error: NotFound) -> tuple[str, int]:
    return _error_page(404, "There is nothing here, or nothing you may see."), 404


@bp.errorhandler(Forbidden)
def forbidden(error: Forbidden) -> tuple[str, int]:
    return _error_page(403, str(error)), 403


def _error_page(status: int, message: str) -> str:
    return render_template(
        "dashboard_error.html", status=status, message=message, signed_in=g.get("signed_in")
    )


# -- signing in and out ---------------------------------------------------------------------


@bp.get("/sign-in")
def sign_in() -> Any:
    """The sign-in form (a signed-in visitor goes straight to the dashboard)."""
    session_id = session.get("sid")
    if isinstance(session_id, str) and _store().find(session_id) is not None:
        return redirect(url_for("dashboard.overview"), code=303)
    return render_template("dashboard_sign_in.html", csrf_token=_sign_in_csrf(), error=None)


@bp.post("/sign-in")
def sign_in_submit() -> Any:
    """Trade a token for a session; every kind of bad token gets the same answer."""
    _check_csrf(session.get("sign_in_csrf"))
    registry: TokenRegistry = current_app.extensions["dpx.tokens"]
    try:
        principal = registry.authenticate(request.form.get("token", "").strip() or None)
    except Unauthenticated:
        principal = None
    if principal is None or principal.role not in ("dpo", "partner"):
        return render_template(
            "dashboard_sign_in.html", csrf_token=_sign_in_csrf(), error=SIGN_IN_FAILED
        ), 401
    session_id = _store().open(principal)
    # A fresh cookie: nothing from before sign-in (session fixation) carries over.
    session.clear()
    session["sid"] = session_id
    return redirect(url_for("dashboard.overview"), code=303)


def _sign_in_csrf() -> str:
    # Before sign-in there is no server-side session, so the sign-in form's CSRF token
    # lives in the signed cookie; it only stops other sites from signing a browser in.
    token = session.get("sign_in_csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["sign_in_csrf"] = token
    return token


@bp.post("/sign-out")
@signed_in
def sign_out() -> Any:
    """End the session server-side and clear the cookie."""
    current: SignedIn = g.signed_in
    _check_csrf(current.csrf_token)
    _store().close(session["sid"], current.principal)
    session.clear()
    return redirect(url_for("dashboard.sign_in"), code=303)


# -- pages ----------------------------------------------------------------------------------


@bp.get("/")
@bp.get("")
@signed_in
def overview() -> str:
    """The DPO's view of every partner, or a partner's view of its own grants."""
    current: SignedIn = g.signed_in
    caller = current.principal
    exchange = _exchange()
    budgets = exchange.budgets(caller)
    now = datetime.now(UTC)
    history = exchange.charges(caller)
    context: dict[str, Any] = {
        "budgets": budgets,
        "burndowns": burndown_charts(
            budgets,
            exact_budgets(exchange.policies),
            history,
            budget_changes_since(current_app.extensions["dpx.audit"], window_start(history, now)),
            now,
            with_global=caller.role == "dpo",
        ),
        "releases": [_release_summary(d) for d in exchange.list_releases(caller, limit=RECENT)],
    }
    if caller.role == "dpo":
        context["refusals"] = _refusals(current_app.extensions["dpx.audit"], now)
        context["expiring"] = _expiring_grants(exchange, now.date())
        context["synopses"] = _synopses(exchange)
    return render_template("dashboard_overview.html", signed_in=current, **context)


@bp.get("/releases/<string:release_id>")
@signed_in
def release(release_id: str) -> str:
    """One release: its query, cost and accuracy, its chart(s) and its rows."""
    current: SignedIn = g.signed_in
    document = _exchange().get_release(current.principal, release_id)
    charts, caption = _release_charts(document)
    return render_template(
        "dashboard_release.html",
        signed_in=current,
        release=_release_summary(document),
        document=document,
        rows=_release_rows(document),
        charts=charts,
        caption=caption,
    )


# -- what the pages show --------------------------------------------------------------------


def _synopses(exchange: Exchange) -> list[dict[str, Any]]:
    """Every build of every declared synopsis, newest first, with its cost (DPO only)."""
    if exchange.synopses is None:
        return []
    found = []
    for dataset in sorted(exchange.policies.datasets.values(), key=lambda d: d.id):
        view = exchange.synopses.describe(dataset)
        if view is None:
            continue
        builds = exchange.synopses.store.history(dataset.id, limit=RECENT)
        found.append(
            {
                "dataset": dataset.id,
                "unit": dataset.budget_unit,
                "marginals": "; ".join("[" + ", ".join(m) + "]" for m in view["marginals"]),
                "stale": bool(view["built"] and view["built"]["stale"]),
                "builds": [
                    {
                        "id": b.synopsis_id,
                        "built_at": b.built_at.strftime("%Y-%m-%d %H:%M UTC"),
                        "cost": float(b.cost),
                        "batches": len(b.batches),
                        "seconds": b.build_seconds,
                    }
                    for b in builds
                ],
            }
        )
    return found


def _refusals(audit: AuditLog, now: datetime) -> list[dict[str, Any]]:
    refused = [
        entry
        for entry in audit.entries(since=now - REFUSALS_SINCE)
        if entry.action == "query.refuse"
    ]
    return [
        {
            "at": entry.body()["at"][:19].replace("T", " ") + " UTC",
            "actor": entry.actor,
            "dataset": entry.dataset,
            "reason": entry.details.get("reason", ""),
            "detail": entry.details.get("detail", ""),
        }
        for entry in reversed(refused[-RECENT * 2 :])
    ]


def _expiring_grants(exchange: Exchange, today: date) -> list[dict[str, Any]]:
    found = []
    for partner in sorted(exchange.policies.partners.values(), key=lambda p: p.id):
        for grant in partner.grants:
            if grant.expires is None or grant.expires > today + EXPIRY_WARNING:
                continue
            days = (grant.expires - today).days
            found.append(
                {
                    "partner": partner.id,
                    "dataset": grant.dataset,
                    "expires": grant.expires.isoformat(),
                    "expired": days < 0,
                    "days": days,
                }
            )
    return sorted(found, key=lambda row: row["expires"])


def _release_summary(document: dict[str, Any]) -> dict[str, Any]:
    query = document.get("query", {})
    privacy = document.get("privacy", {})
    unit = BUDGET_UNITS.get(privacy.get("definition"), "epsilon")
    filters = "; ".join(
        f"{name}: {', '.join(str(v) for v in values)}"
        for name, values in (query.get("filters") or {}).items()
    )
    return {
        "release_id": document.get("release_id", ""),
        "dataset": document.get("dataset", ""),
        "partner": document.get("partner", ""),
        "statistic": query.get("statistic", ""),
        "measure": query.get("measure"),
        "group_by": ", ".join(query.get("group_by") or []) or "—",
        "filters": filters or "none",
        # The exact decimal the ledger charged, as the release states it; never a rounded float.
        "cost": f"{unit} {(privacy.get('cost') or {}).get(unit, privacy.get(unit, 0))}",
        "created_at": document.get("created_at", ""),
    }


def _release_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    group_by = list(document.get("query", {}).get("group_by") or [])
    return [
        {
            "cell": [str(row.get(name, "")) for name in group_by],
            "value": row.get("value"),
            "ci": row.get("ci") or [None, None],
        }
        for row in document.get("rows", [])
    ]


def _release_charts(document: dict[str, Any]) -> tuple[list[Markup], str]:
    """The charts of a release and their caption: lines with bands over months when grouped
    by month, otherwise bars with whiskers; a second dimension gives one panel per value of
    the first (small multiples on one shared axis). None for more than the page can hold."""
    group_by = list(document.get("query", {}).get("group_by") or [])
    if "month" in group_by:
        chart = _month_chart(document)
        if chart is not None:
            return [chart], "Line: released value. Band: its confidence interval."
    summary = _release_summary(document)
    alpha = document.get("accuracy", {}).get("alpha")
    label = f"{summary['statistic']}, whiskers: {1 - alpha:.0%} interval" if alpha else ""
    panels: dict[str, list[Bar]] = {}
    for row in document.get("rows", []):
        cell = [str(row[name]) for name in group_by]
        panel = cell[0] if len(cell) > 1 else ""
        category = ", ".join(cell[1:] if len(cell) > 1 else cell) or "all"
        low, high = row["ci"]
        panels.setdefault(panel, []).append(
            Bar(category, float(row["value"]), (float(low), float(high)))
        )
    if not panels or len(panels) > MAX_RELEASE_PANELS:
        return [], ""
    axis = value_range(
        [v for bars in panels.values() for b in bars for v in (b.value, *b.interval)]
    )
    title = f"{summary['statistic']} by {summary['group_by']} ({summary['dataset']})"
    charts = [
        Markup(  # noqa: S704 - charts.py escapes all text
            bar_chart(
                bars,
                title=f"{title}: {group_by[0]} {panel}" if panel else title,
                y_label=label,
                axis=axis,
            )
        )
        for panel, bars in panels.items()
    ]
    shape = "Bar" if axis.zero_based else "Dot"
    return charts, f"{shape}: released value. Whisker: its confidence interval."


def _month_chart(document: dict[str, Any]) -> Markup | None:
    """A line per combination of the other dimensions over months, with its interval band."""
    group_by = list(document.get("query", {}).get("group_by") or [])
    others = [name for name in group_by if name != "month"]
    months: list[str] = []
    series: dict[tuple[str, ...], dict[str, tuple[float, float, float]]] = {}
    for row in document.get("rows", []):
        month = str(row["month"])
        if month not in months:
            months.append(month)
        low, high = row["ci"]
        key = tuple(str(row[name]) for name in others)
        series.setdefault(key, {})[month] = (float(row["value"]), float(low), float(high))
    if (
        not series
        or len(series) > MAX_RELEASE_LINES
        or any(len(points) != len(months) for points in series.values())
    ):
        return None
    lines = [
        Line(
            label=", ".join(key) or "all",
            values=[points[m][0] for m in months],
            band=[(points[m][1], points[m][2]) for m in months],
        )
        for key, points in series.items()
    ]
    summary = _release_summary(document)
    title = f"{summary['statistic']} by {summary['group_by']} ({summary['dataset']})"
    alpha = document.get("accuracy", {}).get("alpha")
    label = f"{summary['statistic']}, band: {1 - alpha:.0%} interval" if alpha else ""
    return Markup(  # noqa: S704 - charts.py escapes all text
        band_chart(months, lines, title=title, y_label=label)
    )
