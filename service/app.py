"""The application factory: the one place where settings, services and HTTP meet."""

from __future__ import annotations

import logging
import re
import secrets

from flask import Flask, Response, g, request

from service.api import (
    audit,
    budgets,
    dashboard,
    datasets,
    health,
    queries,
    releases,
    signing_keys,
)
from service.api.auth import register_authentication
from service.api.bodies import register_body_limits
from service.api.problems import ProblemApi, register_problem_handlers
from service.api.rate_limits import register_rate_limits
from service.auth.sessions import session_secret
from service.components import Components
from service.config import Settings
from service.observability.logs import configure_logging
from service.observability.metrics import instrument

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the dpx web app; raises if the keyring, policies or database cannot be used."""
    settings = settings or Settings.from_env()
    # No app-wide static route: Flask's default would serve ./static from the working
    # directory. The docs and the dashboard serve their own assets from their blueprints.
    app = Flask("dpx", static_folder=None)
    register_logging(app)
    components = Components.open(settings)
    register_config(app, settings)
    register_services(app, components)
    register_request_ids(app)
    register_metrics(app)
    register_rate_limits(app, settings)
    register_authentication(app)
    register_body_limits(app, settings)
    register_api(app)
    register_dashboard(app, settings)
    register_problem_handlers(app)
    return app


def register_config(app: Flask, settings: Settings) -> None:
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        API_TITLE="dpx",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    app.config["DPX_SETTINGS"] = settings


def register_services(app: Flask, components: Components) -> None:
    app.extensions["dpx.components"] = components
    app.extensions["dpx.database"] = components.database
    app.extensions["dpx.keyring"] = components.keyring
    app.extensions["dpx.audit"] = components.audit
    app.extensions["dpx.tokens"] = components.tokens
    app.extensions["dpx.exchange"] = components.exchange


def register_logging(app: Flask) -> None:
    """JSON log lines with request ids (already set up when gunicorn.conf.py is in use)."""
    configure_logging()


def register_metrics(app: Flask) -> None:
    """Request counts and latencies by URL rule, and Prometheus metrics at ``/metrics``."""
    instrument(app)


def register_request_ids(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        offered = request.headers.get("X-Request-ID", "")
        g.request_id = offered if _REQUEST_ID.match(offered) else "req_" + secrets.token_hex(8)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        # Answers carry budgets, releases and audit entries: no cache may keep them.
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def register_api(app: Flask) -> None:
    api = ProblemApi(
        app,
        spec_kwargs={
            "info": {
                "description": "Differentially private statistics exchange for "
                "child-protection helplines."
            },
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        },
    )
    for module in (health, datasets, queries, releases, budgets, signing_keys, audit):
        api.register_blueprint(module.blp)
    logging.getLogger("dpx").setLevel(logging.INFO)


def register_dashboard(app: Flask, settings: Settings) -> None:
    """The HTML dashboard: a plain blueprint on the app, so it stays out of the OpenAPI spec."""
    app.secret_key = session_secret(app.extensions["dpx.keyring"])
    app.session_interface = dashboard.SessionCookie()
    app.config.update(
        SESSION_COOKIE_NAME="dpx_session",
        SESSION_COOKIE_PATH="/dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.production,
    )
    app.register_blueprint(dashboard.bp)
