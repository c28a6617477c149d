"""Structured logs: every record is one JSON object on one line of standard error.

Each line has ``time``, ``level``, ``logger``, ``message`` and, when the record was made
while serving a request, the ``request_id`` that the response's ``X-Request-ID`` header and
any problem+json body also carry, so an operator can go from a partner's error to its log.

What is never logged: tokens, the Authorization header, key material and data values.
gunicorn's access logger is ``AccessLogger``, which hands an access record the fields below
and nothing else, so no header other than the response's request id can reach a log line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import g, has_request_context
from gunicorn import glogging

# Access-log field -> gunicorn atom (see gunicorn's ``access_log_format``).
ACCESS_FIELDS = {
    "remote": "h",
    "method": "m",
    "path": "U",
    "status": "s",
    "bytes": "B",
    "duration_ms": "M",
    "request_id": "{x-request-id}o",
}
ACCESS_LOGGER = "gunicorn.access"
ACCESS_LOG_FORMAT = "%(m)s %(U)s %(s)s %({x-request-id}o)s"
"""The ``message`` of an access line; the same values also appear as separate fields."""


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger (``logger_class`` in gunicorn.conf.py), with access records that
    carry the atoms of ``ACCESS_FIELDS`` only.

    gunicorn's own ``atoms`` formats a timestamp and copies every request header (the bearer
    token among them), response header and WSGI environ entry into every access record, for
    a format that reads seven values.
    """

    def atoms(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> Any:
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        headers = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
        request_id = next((v for k, v in headers if k.lower() == "x-request-id"), "-")
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "s": status,
            "B": getattr(resp, "sent", None),
            "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            "{x-request-id}o": request_id,
        }


class RequestIdFilter(logging.Filter):
    """Stamps records made inside a Flask request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None and has_request_context():
            record.request_id = g.get("request_id")
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (access records with their request fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if record.name == ACCESS_LOGGER and isinstance(record.args, Mapping):
            for field, atom in ACCESS_FIELDS.items():
                value = record.args[atom]
                entry[field] = None if value in ("-", None) else value
            request_id = entry.pop("request_id")
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JsonStreamHandler(logging.Handler):
    """Writes JSON lines to the standard error the process has at the time of each record.

    Looking ``sys.stderr`` up per record (rather than once) keeps the handler right when
    stderr is replaced, as test runners and daemonising supervisors do.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(JsonFormatter())
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the request it describes
            self.handleError(record)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that sends every logger, gunicorn's too, to JSON lines."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"class": f"{__name__}.JsonStreamHandler"}},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            ACCESS_LOGGER: {"level": "INFO", "handlers": ["json"], "propagate": False},
            "dpx": {"level": level, "propagate": True},
            # /readyz asks Alembic whether the schema is current: not news worth a line.
            "alembic": {"level": "WARNING", "propagate": True},
        },
    }


def configure_logging() -> None:
    """Route the root logger through one JSON handler, unless one is there already.

    Under gunicorn, ``gunicorn.conf.py`` has installed it before the app is built; a second
    one would print every line twice.
    """
    root = logging.getLogger()
    if not any(isinstance(handler, JsonStreamHandler) for handler in root.handlers):
        root.addHandler(JsonStreamHandler())
        logging.getLogger("dpx").setLevel(logging.INFO)
