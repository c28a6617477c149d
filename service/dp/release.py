"""The release document: one differentially private answer as it is signed, stored and sent.

The exchange writes one for a charged query, the synopses for a free answer; the release
store keeps it exactly as signed, and a repeat of the question is answered with it again,
with the caller's budget beside it.
Its members are those of a release in ``docs/DESIGN.md``; the nested summaries (``privacy``,
``mechanism``, ``accuracy``) and the rows differ by statistic and definition, so they stay
plain JSON objects here.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class UnsignedRelease(TypedDict):
    """A release before it is signed: every member the signature covers."""

    release_id: str
    dataset: str
    partner: str
    query: dict[str, Any]
    rows: list[dict[str, Any]]
    privacy: dict[str, Any]
    mechanism: dict[str, Any]
    accuracy: dict[str, Any]
    policy_version: str
    created_at: str
    source: NotRequired[dict[str, str]]
    """Only on an answer from a synopsis: ``{"synopsis": <synopsis id>}``."""


class ReleaseDocument(UnsignedRelease):
    """A signed release, as stored."""

    signature: dict[str, str]


class AnsweredRelease(ReleaseDocument):
    """A signed release as one caller receives it."""

    budget: dict[str, Any]
    """What the caller's grant and the dataset have left as it is sent: not signed and never
    stored, since every later charge changes it."""
