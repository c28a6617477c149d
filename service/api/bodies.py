"""Request bodies: a size limit for each route, and JSON that cannot exhaust the parser.

Every request may carry at most ``DPX_MAX_QUERY_BYTES`` (a query is a few hundred bytes);
a view marked ``@upload_body`` takes up to ``DPX_MAX_UPLOAD_BYTES``. The limit is checked
from ``Content-Length`` before a byte of the body is read (413), and enforced while reading
a body sent without one. JSON bodies are parsed with bounded nesting and bounded numbers,
so a hostile body is a 400, never a 500 or seconds of CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flask_smorest
from flask import Flask, Request, request
from marshmallow import Schema
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from service.api.auth import view_mark
from service.config import Settings
from service.json_input import HostileJson, load_json

V = TypeVar("V", bound=Callable[..., Any])

_UPLOAD = "dpx_upload_body"


def upload_body(view: V) -> V:
    """Mark a view as taking an upload: its body may be up to ``DPX_MAX_UPLOAD_BYTES``."""
    setattr(view, _UPLOAD, True)
    return view


def body_limit(settings: Settings) -> int:
    """The largest body this request may carry, in bytes."""
    return settings.max_upload_bytes if view_mark(_UPLOAD) else settings.max_query_bytes


def register_body_limits(app: Flask, settings: Settings) -> None:
    """Refuse a too-large body from its ``Content-Length``, before anything reads it.

    Register after authentication: a caller without a token learns nothing, not even the
    limit, and its body is never read either way.
    """

    @app.before_request
    def refuse_large_bodies() -> None:
        limit = body_limit(settings)
        request.max_content_length = limit
        if request.content_length is not None and request.content_length > limit:
            raise RequestEntityTooLarge()


class BodyParser(FlaskParser):
    """webargs' Flask parser with ``load_json``: no JSON body can raise anything but a 400."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return load_json(data)
        except HostileJson as error:
            abort(400, exc=error, messages={"json": [f"Invalid JSON body: {error}."]})
        except (ValueError, UnicodeDecodeError) as error:
            abort(400, exc=error, messages={"json": ["Invalid JSON body."]})


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """flask-smorest's Blueprint, parsing JSON bodies with ``BodyParser``, and with one
    instance of each argument schema for all requests: given a class, webargs builds a new
    instance per request, and marshmallow deep-copies every declared field to do so."""

    ARGUMENTS_PARSER = BodyParser()

    def arguments(self, schema: type[Schema] | Schema, **options: Any) -> Any:
        return super().arguments(schema() if isinstance(schema, type) else schema, **options)
