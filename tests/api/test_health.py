"""Readiness asks the database module whether the database is up and current."""

from __future__ import annotations

from flask import Flask

from service.database.engine import Database
from tests.live_server import free_port


def test_ready_is_503_naming_the_database_when_it_is_unreachable(app: Flask) -> None:
    reachable = app.extensions["dpx.database"]
    # A real database URL on a loopback port where nothing listens.
    app.extensions["dpx.database"] = Database(
        f"postgresql+psycopg://dpx@127.0.0.1:{free_port()}/dpx?connect_timeout=2"
    )
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["dpx.database"].dispose()
        app.extensions["dpx.database"] = reachable
    assert response.status_code == 503
    assert response.json["code"] == "unavailable"
    assert response.json["checks"]["database"] == "unreachable"
    assert response.json["checks"]["keyring"] == "ok"


def test_database_is_up_only_when_it_answers(app: Flask) -> None:
    assert app.extensions["dpx.database"].is_up()
    down = Database(f"postgresql+psycopg://dpx@127.0.0.1:{free_port()}/dpx?connect_timeout=2")
    assert not down.is_up()
    down.dispose()
