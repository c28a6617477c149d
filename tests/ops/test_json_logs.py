"""Log lines are JSON objects with the request id, and access lines never carry headers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from types import SimpleNamespace

import pytest
from flask import Flask, g
from gunicorn.config import Config

from service.observability.logs import (
    ACCESS_FIELDS,
    ACCESS_LOG_FORMAT,
    AccessLogger,
    JsonFormatter,
    JsonStreamHandler,
    configure_logging,
)

# The access atoms of a POST to /v1/queries answered 201 with 512 bytes in 42 ms.
ATOMS: dict[str, object] = {
    "h": "10.0.0.7",
    "m": "POST",
    "U": "/v1/queries",
    "s": "201",
    "B": 512,
    "M": 42,
    "{x-request-id}o": "req_feedface",
}


def _access_record(atoms: dict[str, object]) -> logging.LogRecord:
    return logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, ACCESS_LOG_FORMAT, (atoms,), None
    )


def test_a_record_made_during_a_request_carries_its_request_id(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("dpx.test-json-logs")
    with app.test_request_context("/v1/datasets"):
        g.request_id = "req_0123abcd"
        logger.warning("refused %s", "something")
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert {k: line[k] for k in ("level", "logger", "message", "request_id")} == {
        "level": "WARNING",
        "logger": "dpx.test-json-logs",
        "message": "refused something",
        "request_id": "req_0123abcd",
    }
    assert line["time"].endswith("Z")


def test_one_handler_however_many_apps(app: Flask) -> None:
    configure_logging()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, JsonStreamHandler)]
    assert len(handlers) == 1


def test_access_lines_take_fixed_fields_and_never_a_request_header() -> None:
    atoms = {
        **ATOMS,
        "{authorization}i": "Bearer dpx_secret_token",
        "{cookie}i": "session=abc",
        "q": "token=dpx_secret_token",
    }
    line = JsonFormatter().format(_access_record(atoms))
    assert json.loads(line) == {
        "time": json.loads(line)["time"],
        "level": "INFO",
        "logger": "gunicorn.access",
        "message": "POST /v1/queries 201 req_feedface",
        "remote": "10.0.0.7",
        "method": "POST",
        "path": "/v1/queries",
        "status": "201",
        "bytes": 512,
        "duration_ms": 42,
        "request_id": "req_feedface",
    }
    assert "secret" not in line and "session" not in line


def test_gunicorns_access_records_hold_the_access_fields_and_nothing_else() -> None:
    """What gunicorn passes to the access log for a request with a bearer token: the atoms
    of the access fields, with their values, and no header or environ entry."""
    environ = {
        "REMOTE_ADDR": "10.0.0.7",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/queries",
        "QUERY_STRING": "token=dpx_secret_token",
        "HTTP_AUTHORIZATION": "Bearer dpx_secret_token",
    }
    response = SimpleNamespace(
        status="201 CREATED",
        headers=[("Content-Type", "application/json"), ("X-Request-ID", "req_feedface")],
        sent=512,
    )
    request = SimpleNamespace(headers=[("Authorization", "Bearer dpx_secret_token")])
    atoms = AccessLogger(Config()).atoms(response, request, environ, timedelta(milliseconds=42))
    assert atoms == ATOMS
    assert set(atoms) == set(ACCESS_FIELDS.values())
    assert "secret" not in JsonFormatter().format(_access_record(atoms))


def test_an_exception_is_logged_inside_the_json_object() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "dpx.api", logging.ERROR, __file__, 1, "unhandled error", None, sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "unhandled error"
    assert "RuntimeError: boom" in entry["exception"]
