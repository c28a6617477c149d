"""Reloading the policies of a running service: all or nothing, the last good set stays.

A DPO deploys a policy change by editing the files and sending SIGHUP (``dpx reload``, or
``kill -HUP`` to the gunicorn master; see ``gunicorn.conf.py``). A set with any defect is
refused whole, logged as ``file:field: reason`` lines and audited; the service keeps
answering under the set it had. So is a set that shrinks a bound below what stored batches
were stored under (``store.bounds``). Either way the outcome is written to a status file,
which is how ``dpx reload`` learns whether the master accepted the set, and why not.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from service.policy.changes import review
from service.policy.errors import PolicySetError
from service.policy.loader import load_policies
from service.policy.model import PolicySet

log = logging.getLogger("dpx.policy")


class PolicyHolder(Protocol):
    """What holds the policy set in force (the exchange)."""

    @property
    def policies(self) -> PolicySet: ...

    def replace_policies(self, policies: PolicySet, *, actor: str = ...) -> None:
        """Put ``policies`` in force, or raise ``PolicySetError`` and keep the current set."""

    def refuse_policies(self, defects: Sequence[str], *, actor: str = ...) -> None: ...


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: ``accepted`` (also when nothing changed) with the ``changes``
    put in force, or refused with its ``defects``; ``version`` is the set in force after."""

    accepted: bool
    version: str
    previous: str
    changes: tuple[str, ...]
    defects: tuple[str, ...]
    at: str

    def write(self, path: Path) -> None:
        """Replace the status file atomically: a reader sees the old outcome or this one."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> ReloadOutcome:
        """The outcome in a status file; ``ValueError`` if it is not one."""
        try:
            data = json.loads(path.read_text())
            return cls(
                accepted=bool(data["accepted"]),
                version=str(data["version"]),
                previous=str(data["previous"]),
                changes=tuple(str(c) for c in data["changes"]),
                defects=tuple(str(d) for d in data["defects"]),
                at=str(data["at"]),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a policy reload status ({error})") from error


def reload_policies(
    holder: PolicyHolder, directory: Path, spent: Mapping[tuple[str, str], Fraction]
) -> ReloadOutcome:
    """Put the set in ``directory`` in force if every file validates; else keep the current one.

    ``spent`` is the ledger's spend (``Ledger.all_spent``), so that each budget change is
    logged with what its account has already spent. A refused set is logged defect by
    defect and audited through the holder.
    """
    current = holder.policies
    at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        proposed = load_policies(directory)
    except PolicySetError as refused:
        defects = tuple(str(defect) for defect in refused.errors)
        log.error(
            "policy reload refused: %d defect(s) in %s; keeping policy version %s",
            len(defects),
            directory,
            current.version,
        )
        for defect in defects:
            log.error("%s", defect)
        holder.refuse_policies(defects)
        return ReloadOutcome(False, current.version, current.version, (), defects, at)
    if proposed.version == current.version:
        log.info("policies unchanged (version %s)", current.version)
        return ReloadOutcome(True, current.version, current.version, (), (), at)
    changes = tuple(str(change) for change in review(current, proposed, spent).changes)
    try:
        holder.replace_policies(proposed)
    except PolicySetError as refused:
        # The holder checks the set against the stored data (bounds it may not shrink).
        defects = tuple(str(defect) for defect in refused.errors)
        log.error(
            "policy reload refused: %d defect(s) against stored data; keeping policy version %s",
            len(defects),
            current.version,
        )
        for defect in defects:
            log.error("%s", defect)
        holder.refuse_policies(defects)
        return ReloadOutcome(False, current.version, current.version, (), defects, at)
    for change in changes:
        log.info("policy change: %s", change)
    log.info("policies reloaded: version %s -> %s", current.version, proposed.version)
    return ReloadOutcome(True, proposed.version, current.version, changes, (), at)
