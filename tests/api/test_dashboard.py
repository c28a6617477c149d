"""The HTML dashboard through the Flask client: sign-in, sessions, CSRF, and who sees what."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
from flask import Flask
from flask.sessions import NullSession
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from service.app import create_app
from service.auth.registry import IssuedToken
from service.config import Settings
from service.database.schema import sessions
from service.policy.loader import load_policies
from tests.conftest import BOTH_BACKENDS, bearer

pytestmark = BOTH_BACKENDS

MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def issued(app: Flask) -> dict[str, IssuedToken]:
    registry = app.extensions["dpx.tokens"]
    return {
        "dpo": registry.issue("dpo", None),
        "partner": registry.issue("partner", "no-police"),
        "other_partner": registry.issue("partner", "interpol-sg"),
        "owner": registry.issue("owner", "uk-helpline-2024"),
    }


@pytest.fixture
def release_id(client: FlaskClient, issued: dict[str, IssuedToken]) -> str:
    """A count-by-month release of no-police, and one refused query, over uploaded contacts."""
    records = [
        {
            "month": month,
            "country": "GB",
            "channel": channel,
            "caller_type": "self_concerned",
            "referral_source": "police_warning",
            "minutes": 30,
        }
        for month in MONTHS
        for channel in ("phone", "chat")
        for _ in range(5)
    ]
    uploaded = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        data=json.dumps(records),
        headers={**bearer(issued["owner"].token), "Content-Type": "application/json"},
    )
    assert uploaded.status_code == 201, uploaded.json
    partner = bearer(issued["partner"].token)
    released = client.post(
        "/v1/queries",
        headers=partner,
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month"],
            "epsilon": 0.5,
        },
    )
    assert released.status_code == 201, released.json
    refused = client.post(
        "/v1/queries",
        headers=partner,
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["channel"],
            "epsilon": 1.0,
        },
    )
    assert refused.status_code == 403
    return str(released.json["release_id"])


def csrf_of(page: TestResponse) -> str:
    found = CSRF.search(page.get_data(as_text=True))
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: FlaskClient, token: str) -> TestResponse:
    form = client.get("/dashboard/sign-in")
    return client.post("/dashboard/sign-in", data={"token": token, "csrf_token": csrf_of(form)})


def session_rows(app: Flask) -> list[Any]:
    with app.extensions["dpx.database"].read() as conn:
        return list(conn.execute(select(sessions)).all())


def is_sign_in_redirect(response: TestResponse) -> bool:
    return response.status_code == 303 and response.location.endswith("/dashboard/sign-in")


# -- signing in --------------------------------------------------------------------------------


def test_dashboard_sends_a_visitor_without_session_to_the_sign_in_form(client: FlaskClient) -> None:
    assert is_sign_in_redirect(client.get("/dashboard"))
    form = client.get("/dashboard/sign-in")
    html = form.get_data(as_text=True)
    assert form.status_code == 200
    assert '<form method="post"' in html and 'type="password"' in html
    assert form.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert form.headers["X-Frame-Options"] == "DENY"


def test_every_bad_token_gets_the_same_answer_and_no_session(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    registry = app.extensions["dpx.tokens"]
    revoked = registry.issue("partner", "no-police")
    registry.revoke(revoked.token_id)
    bodies = set()
    for token in ["", "not-a-token", "dpx_" + "A" * 43, revoked.token, issued["owner"].token]:
        response = sign_in(client, token)
        assert response.status_code == 401
        bodies.add(response.get_data(as_text=True))
    assert len(bodies) == 1
    assert "That token cannot sign in to the dashboard." in bodies.pop()
    assert session_rows(app) == []
    assert is_sign_in_redirect(client.get("/dashboard"))


def test_sign_in_sets_a_strict_http_only_cookie_holding_only_a_session_id(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    response = sign_in(client, issued["partner"].token)
    assert response.status_code == 303 and response.location.endswith("/dashboard")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http in this test; see the https test below
    value = client.get_cookie("dpx_session", path="/dashboard")
    assert value is not None
    assert issued["partner"].token not in value.value
    assert "no-police" not in value.value and "partner" not in value.value
    [row] = session_rows(app)
    assert (row.token_id, row.role, row.subject) == (
        issued["partner"].token_id,
        "partner",
        "no-police",
    )
    assert client.get("/dashboard").status_code == 200


def test_the_api_neither_reads_nor_sets_the_dashboard_session(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    """A dashboard cookie sent to the API (by a client that ignores its path) signs no one
    in there, API requests get a session that cannot be written, and no API answer sets or
    clears a session cookie."""
    with app.test_request_context("/v1/datasets"):
        assert isinstance(flask.session, NullSession)
        with pytest.raises(RuntimeError):
            flask.session["signed_in"] = "someone"
    with app.test_request_context("/dashboard"):
        assert not isinstance(flask.session, NullSession)
    sign_in(client, issued["partner"].token)
    session_cookie = client.get_cookie("dpx_session", path="/dashboard")
    assert session_cookie is not None
    client.set_cookie("dpx_session", session_cookie.value, path="/")
    for path in ("/v1/datasets", "/v1/budgets", "/healthz"):
        response = client.get(path)
        assert "Set-Cookie" not in response.headers
    assert client.get("/v1/datasets").status_code == 401
    assert client.get("/dashboard").status_code == 200


def test_cookie_is_secure_over_https_and_in_production(
    settings: Settings, issued: dict[str, IssuedToken], app: Flask
) -> None:
    over_https = app.test_client()
    form = over_https.get("/dashboard/sign-in", base_url="https://localhost")
    response = over_https.post(
        "/dashboard/sign-in",
        base_url="https://localhost",
        data={"token": issued["dpo"].token, "csrf_token": csrf_of(form)},
    )
    assert "Secure" in response.headers["Set-Cookie"]
    production = create_app(replace(settings, production=True))
    try:
        form = production.test_client().get("/dashboard/sign-in")
        assert "Secure" in form.headers["Set-Cookie"]
    finally:
        production.extensions["dpx.database"].dispose()


def test_the_token_is_never_taken_from_the_url(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    form = client.get("/dashboard/sign-in")
    response = client.post(
        f"/dashboard/sign-in?token={issued['dpo'].token}", data={"csrf_token": csrf_of(form)}
    )
    assert response.status_code == 401
    assert session_rows(app) == []


def test_a_session_works_in_every_worker(
    settings: Settings, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    sign_in(client, issued["dpo"].token)
    cookie = client.get_cookie("dpx_session", path="/dashboard")
    assert cookie is not None
    other_worker = create_app(settings)
    try:
        other = other_worker.test_client()
        other.set_cookie("dpx_session", cookie.value, path="/dashboard")
        assert other.get("/dashboard").status_code == 200
    finally:
        other_worker.extensions["dpx.database"].dispose()


# -- CSRF, sign-out, revocation ------------------------------------------------------------------


def test_posts_without_the_csrf_token_are_refused(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    client.get("/dashboard/sign-in")
    refused = client.post("/dashboard/sign-in", data={"token": issued["dpo"].token})
    assert refused.status_code == 400
    assert "text/html" in refused.content_type
    assert session_rows(app) == []
    sign_in(client, issued["dpo"].token)
    for form in ({}, {"csrf_token": "forged"}):
        assert client.post("/dashboard/sign-out", data=form).status_code == 400
    assert client.get("/dashboard").status_code == 200  # still signed in


def test_sign_out_ends_the_session_on_the_server(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    sign_in(client, issued["dpo"].token)
    cookie = client.get_cookie("dpx_session", path="/dashboard")
    assert cookie is not None
    page = client.get("/dashboard")
    signed_out = client.post("/dashboard/sign-out", data={"csrf_token": csrf_of(page)})
    assert is_sign_in_redirect(signed_out)
    assert session_rows(app) == []
    assert is_sign_in_redirect(client.get("/dashboard"))
    # A copy of the old cookie is worthless: the server forgot the session.
    client.set_cookie("dpx_session", cookie.value, path="/dashboard")
    assert is_sign_in_redirect(client.get("/dashboard"))


def test_revoking_the_token_ends_its_sessions(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    sign_in(client, issued["partner"].token)
    assert client.get("/dashboard").status_code == 200
    app.extensions["dpx.tokens"].revoke(issued["partner"].token_id)
    assert is_sign_in_redirect(client.get("/dashboard"))


# -- who sees what ------------------------------------------------------------------------------


def budget_rows(page: TestResponse) -> set[tuple[str, str]]:
    return set(
        re.findall(
            r'<tr class="budget" data-partner="([^"]+)" data-dataset="([^"]+)"',
            page.get_data(as_text=True),
        )
    )


def test_dpo_sees_every_partner_refusals_and_expiring_grants(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    sign_in(client, issued["dpo"].token)
    page = client.get("/dashboard")
    html = page.get_data(as_text=True)
    partners = {partner for partner, _dataset in budget_rows(page)}
    assert partners == {"no-police", "ie-helpline", "interpol-sg", "research-uni"}
    assert release_id in html
    assert 'id="refusals"' in html and "query.refuse" not in html
    refusals = html.split('id="refusals"')[1].split("</section>")[0]
    assert "policy" in refusals and "uk-helpline-2024" in refusals
    expiring = html.split('id="expiring"')[1].split("</section>")[0]
    assert "interpol-sg" in expiring and "2025-01-31" in expiring and "expired" in expiring
    # One burn-down chart per dataset, with the global cap and every grant on it.
    burndown = html.split('id="burndown"')[1].split("</section>")[0]
    assert burndown.count("<svg") == 3
    assert "global cap 8" in burndown and "no-police (grant 2)" in burndown


def test_partner_sees_only_its_own_budgets_and_releases(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    sign_in(client, issued["other_partner"].token)
    page = client.get("/dashboard")
    html = page.get_data(as_text=True)
    assert {partner for partner, _ in budget_rows(page)} == {"interpol-sg"}
    assert "no-police" not in html
    assert release_id not in html
    assert 'id="refusals"' not in html and "global cap" not in html
    other = client.get(f"/dashboard/releases/{release_id}")
    assert other.status_code == 404
    assert "text/html" in other.content_type and "no-police" not in other.get_data(as_text=True)


def test_partner_burndown_steps_down_by_its_charge(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    sign_in(client, issued["partner"].token)
    html = client.get("/dashboard").get_data(as_text=True)
    assert release_id in html
    assert re.search(r"no-police \(grant 2\): 1\.5 epsilon remaining", html)


def test_burndown_draws_each_grant_as_it_was_before_and_after_a_policy_change(
    app: Flask,
    client: FlaskClient,
    issued: dict[str, IssuedToken],
    release_id: str,
    policy_dir: Path,
) -> None:
    # 0.5 spent of a grant of 2, then the DPO raises the grant to 3.
    partner_file = policy_dir / "partners" / "no-police.yaml"
    partner_file.write_text(
        partner_file.read_text().replace("budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}", 1)
    )
    app.extensions["dpx.exchange"].replace_policies(load_policies(policy_dir))
    sign_in(client, issued["partner"].token)
    html = client.get("/dashboard").get_data(as_text=True)
    assert re.search(r"no-police \(grant 3\): 2\.5 epsilon remaining", html)
    chart = next(
        svg for svg in html.split("<svg")[1:] if "uk-helpline-2024: epsilon remaining" in svg
    )
    [line] = re.findall(r'<polyline class="series" points="([^"]+)"', chart)
    ys = [float(pair.split(",")[1]) for pair in line.split()]
    # From the grant of 2: down by the charge, then up by the raise to 2.5, above where it
    # started (SVG y grows downwards). Drawn against today's grant, it would start at 3.
    assert len(ys) == 6
    start, charged, raised = ys[0], ys[2], ys[4]
    assert charged > start > raised
    assert (charged - start) / (start - raised) == pytest.approx(1.0, rel=0.02)


def test_a_grant_spent_to_the_last_unit_reads_zero_remaining(
    app: Flask,
    client: FlaskClient,
    issued: dict[str, IssuedToken],
    release_id: str,
    policy_dir: Path,
) -> None:
    # 0.1 has no exact float: a burn-down that went through floats showed 5.55e-18 left.
    (policy_dir / "partners" / "tenth.yaml").write_text(
        """
id: tenth
name: A partner granted a tenth of epsilon
jurisdiction: GB
grants:
  - dataset: uk-helpline-2024
    budget: {epsilon: 0.1}
    statistics: [count]
    dimensions: [month]
""",
        encoding="utf-8",
    )
    app.extensions["dpx.exchange"].replace_policies(load_policies(policy_dir))
    token = app.extensions["dpx.tokens"].issue("partner", "tenth").token
    spent = client.post(
        "/v1/queries",
        headers=bearer(token),
        json={"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1},
    )
    assert spent.status_code == 201, spent.json
    sign_in(client, token)
    html = client.get("/dashboard").get_data(as_text=True)
    assert re.search(r"tenth \(grant 0\.1\): 0 epsilon remaining", html)


def test_release_page_draws_the_months_as_a_line_inside_a_band(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    sign_in(client, issued["partner"].token)
    page = client.get(f"/dashboard/releases/{release_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    [line] = re.findall(r'<polyline class="series" points="([^"]+)"', html)
    assert len(line.split()) == len(MONTHS)
    [band] = re.findall(r'<polygon class="band" points="([^"]+)"', html)
    assert len(band.split()) == 2 * len(MONTHS)
    for month in MONTHS:
        assert f"<td>{month}</td>" in html
    dpo = client.application.test_client()
    sign_in(dpo, issued["dpo"].token)
    assert dpo.get(f"/dashboard/releases/{release_id}").status_code == 200


def test_dashboard_is_not_part_of_the_api_spec(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    assert not [path for path in paths if path.startswith("/dashboard")]


def test_an_expired_session_stops_working(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    sign_in(client, issued["dpo"].token)
    with app.extensions["dpx.database"].write() as conn:
        conn.execute(update(sessions).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert is_sign_in_redirect(client.get("/dashboard"))


def test_audit_text_is_escaped_on_the_page(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    hostile = '<script>alert("x")</script>'
    with app.extensions["dpx.database"].write() as conn:
        app.extensions["dpx.audit"].append(
            conn,
            actor=hostile,
            action="query.refuse",
            dataset="uk-helpline-2024",
            details={"reason": "policy", "detail": hostile},
        )
    sign_in(client, issued["dpo"].token)
    html = client.get("/dashboard").get_data(as_text=True)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_a_release_by_month_and_channel_draws_a_line_per_channel(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    released = client.post(
        "/v1/queries",
        headers=bearer(issued["partner"].token),
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month", "channel"],
            "filters": {"channel": ["phone", "chat"]},
            "epsilon": 0.25,
        },
    )
    assert released.status_code == 201, released.json
    sign_in(client, issued["partner"].token)
    html = client.get(f"/dashboard/releases/{released.json['release_id']}").get_data(as_text=True)
    lines = re.findall(r'<polyline class="series" points="([^"]+)"', html)
    assert len(lines) == 2 and all(len(line.split()) == len(MONTHS) for line in lines)
    assert html.count('<polygon class="band"') == 2
    assert "channel: phone, chat" in html


def _release_page(client: FlaskClient, token: str, group_by: list[str]) -> str:
    released = client.post(
        "/v1/queries",
        headers=bearer(token),
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": group_by,
            "epsilon": 0.25,
        },
    )
    assert released.status_code == 201, released.json
    sign_in(client, token)
    page = client.get(f"/dashboard/releases/{released.json['release_id']}")
    assert page.status_code == 200
    return page.get_data(as_text=True)


def test_a_release_by_channel_draws_a_bar_with_a_whisker_per_channel(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    html = _release_page(client, issued["partner"].token, ["channel"])
    assert html.count("<svg") == 1
    assert html.count('class="bar"') == 4
    assert html.count('class="whisker"') == 4
    assert "Whisker: its confidence interval." in html
    for channel in ("phone", "chat", "email", "web"):
        assert f"<td>{channel}</td>" in html
        assert re.search(rf"<title>{channel}: -?\d[\d,]* \(\d[\d,]* to \d[\d,]*\)</title>", html)


def test_a_release_by_two_dimensions_draws_one_panel_per_value_of_the_first(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    html = _release_page(client, issued["partner"].token, ["channel", "referral_source"])
    assert html.count("<svg") == 4
    assert html.count('class="whisker"') == 4 * 6
    for channel in ("phone", "chat", "email", "web"):
        assert f"count by channel, referral_source (uk-helpline-2024): channel {channel}" in html


def test_dpo_is_warned_of_a_grant_expiring_within_60_days(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken], policy_dir: Path
) -> None:
    soon = date.today() + timedelta(days=30)
    later = date.today() + timedelta(days=90)
    (policy_dir / "partners" / "short-study.yaml").write_text(
        f"""
id: short-study
name: A study whose grants end soon
jurisdiction: GB
grants:
  - dataset: uk-helpline-2024
    budget: {{epsilon: 0.5}}
    statistics: [count]
    dimensions: [month]
    expires: {soon.isoformat()}
  - dataset: nl-helpline-2024
    budget: {{rho: 0.1}}
    statistics: [count]
    dimensions: [month]
    expires: {later.isoformat()}
""",
        encoding="utf-8",
    )
    app.extensions["dpx.exchange"].replace_policies(load_policies(policy_dir))
    sign_in(client, issued["dpo"].token)
    html = client.get("/dashboard").get_data(as_text=True)
    expiring = html.split('id="expiring"')[1].split("</section>")[0]
    assert soon.isoformat() in expiring and "expires in 30 days" in expiring
    assert later.isoformat() not in expiring


def test_release_page_shows_the_exact_cost_charged(
    client: FlaskClient, issued: dict[str, IssuedToken], release_id: str
) -> None:
    released = client.post(
        "/v1/queries",
        headers=bearer(issued["partner"].token),
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["channel"],
            "accuracy": {"max_error": 80},
        },
    )
    assert released.status_code == 201, released.json
    exact = released.json["privacy"]["cost"]["epsilon"]
    assert len(exact) > 6  # rounded up to a nano-unit: more digits than a float's %g shows
    sign_in(client, issued["partner"].token)
    html = client.get(f"/dashboard/releases/{released.json['release_id']}").get_data(as_text=True)
    assert f"<dd>epsilon {exact}</dd>" in html


def test_dpo_sees_each_synopsis_and_what_it_cost(
    app: Flask, client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    sign_in(client, issued["dpo"].token)
    declared = client.get("/dashboard").get_data(as_text=True)
    section = declared.split('id="synopses"')[1].split("</section>")[0]
    assert "nl-helpline-2024" in section and "not built yet" in section
    synopses = app.extensions["dpx.exchange"].synopses
    first = synopses.build("nl-helpline-2024", actor="admin:test").stored.synopsis_id
    second = synopses.build("nl-helpline-2024", actor="admin:test").stored.synopsis_id
    html = client.get("/dashboard").get_data(as_text=True)
    section = html.split('id="synopses"')[1].split("</section>")[0]
    assert f"{second} (answering)" in section and f"{first} (superseded)" in section
    assert section.count('<td class="num">0.5</td>') == 2
    partner = app.test_client()
    sign_in(partner, issued["partner"].token)
    assert 'id="synopses"' not in partner.get("/dashboard").get_data(as_text=True)
