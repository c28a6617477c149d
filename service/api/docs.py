"""The API's own documentation: the self-hosted docs page, and the decorators that put
bearer security and problem+json error responses into the OpenAPI document.

The docs page is Swagger UI, vendored under ``static/docs`` (Apache-2.0, licence beside it)
and served by dpx itself: dpx runs on networks with no internet access, so the page loads
nothing from anywhere else.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from flask import Response, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

V = TypeVar("V", bound=Callable[..., Any])

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
"""The ``security`` of an operation that needs ``Authorization: Bearer <token>``."""

PUBLIC: list[dict[str, list[str]]] = []
"""The ``security`` of an operation that anyone may call."""

OPENAPI_JSON_ENDPOINT = "api-docs.openapi_json"
"""The endpoint that serves the OpenAPI document (flask-smorest's docs blueprint)."""

ASSETS = Path(__file__).resolve().parent / "static" / "docs"

blp = Blueprint(
    "docs",
    __name__,
    description="This API's documentation",
    static_folder=str(ASSETS),
    static_url_path="/docs/assets",
)


def problem_responses(blp: Blueprint, *statuses: int) -> Callable[[V], V]:
    """Document that a view may answer with each of ``statuses`` as problem+json.

    Each status refers to the shared response component of that status, which the
    ``ProblemApi`` documents with ``ProblemSchema`` and examples of its stable codes.
    """

    def decorate(view: V) -> V:
        for status in statuses:
            view = blp.alt_response(status, HTTPStatus(status).name)(view)
        return view

    return decorate


# The page runs only the vendored scripts and talks only to this service; Swagger UI sets
# style attributes and draws its icons as data: images, which are all it needs beyond that.
DOCS_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dpx API</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec}"></div>
<script src="{bundle}"></script>
<script src="{start}"></script>
</body>
</html>
"""


@blp.route("/docs")
class Docs(MethodView):
    @blp.doc(
        security=PUBLIC,
        responses={
            "200": {
                "description": "an HTML page that renders this OpenAPI document",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    )
    def get(self) -> Response:
        """The API documentation page; its scripts and styles are served by dpx itself."""
        page = _PAGE.format(
            css=html.escape(url_for("docs.static", filename="swagger-ui.css")),
            bundle=html.escape(url_for("docs.static", filename="swagger-ui-bundle.js")),
            start=html.escape(url_for("docs.static", filename="dpx-docs.js")),
            spec=html.escape(url_for(OPENAPI_JSON_ENDPOINT)),
        )
        response = Response(page, mimetype="text/html")
        response.headers.update(DOCS_SECURITY_HEADERS)
        return response
