"""Parsing JSON from outside: nesting and numbers are bounded before they can hurt.

Python's parser recurses once per nesting level (thousands of levels raise
``RecursionError``) and converts integers of any length (thousands of digits raise
``ValueError`` or take quadratic time, and overflow a float later); and of a key named twice
in one object it silently keeps the last value, where a CSV upload with a column named twice
is refused. Every JSON document that arrives from a caller, a query or an uploaded batch, is
read with ``load_json``.
"""

from __future__ import annotations

import json
import math
from typing import Any


class HostileJson(ValueError):
    """A JSON document nested too deeply, spelling a number too long to convert safely, or
    naming a key twice in one object."""


MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a query may have (it needs 3)."""

MAX_NUMBER_CHARS = 40
"""The longest number a JSON body may spell; far beyond any epsilon, bound or count."""


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise HostileJson(f"a number has more than {MAX_NUMBER_CHARS} characters")
    if not any(c in text for c in ".eE"):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise HostileJson(f"{text} is out of range for a number")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise HostileJson(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return found


def _depth(document: Any) -> int:
    """How deeply arrays and objects nest in a parsed document (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in node)
    return deepest


def load_json(raw: bytes | str, *, max_depth: int | None = MAX_DEPTH) -> Any:
    """Parse a JSON document with bounded numbers and nesting; ``ValueError`` if it is bad.

    Raises ``HostileJson`` for nesting deeper than ``max_depth`` (None: as deep as the
    parser can go) or a too long number, ``json.JSONDecodeError`` for bad syntax and
    ``UnicodeDecodeError`` for bytes that are not UTF-8. ``max_depth`` is checked on the
    parsed document, so pass None for large documents whose shape the caller checks itself.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        document = json.loads(
            text,
            parse_int=_number,
            parse_float=_number,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except RecursionError:
        # The C scanner recurses once per level and stops cleanly at the recursion limit.
        raise HostileJson("arrays and objects nest too deeply") from None
    if max_depth is not None and _depth(document) > max_depth:
        raise HostileJson(f"arrays and objects nest deeper than {max_depth} levels")
    return document


def _constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser accepts them unless told otherwise.
    raise HostileJson(f"{name} is not a JSON number")
