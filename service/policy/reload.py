"""Reloading the policies of a running service: all or nothing, the last good set stays.

A DPO deploys a policy change by editing the files and sending SIGHUP (see
``gunicorn.conf.py``). A set with any defect is refused whole and logged as
``file:field: reason`` lines; the service keeps answering under the set it had. So is a set
that shrinks a bound below what stored batches were stored under (``store.bounds``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from service.policy.changes import policy_changes
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


def reload_policies(holder: PolicyHolder, directory: Path) -> bool:
    """Put the set in ``directory`` in force if every file validates; else keep the current one.

    Returns True when the set in force is now the one in ``directory`` (also when it already
    was), False when it was refused; each defect of a refused set is logged on its own line.
    """
    current = holder.policies
    try:
        proposed = load_policies(directory)
    except PolicySetError as refused:
        log.error(
            "policy reload refused: %d defect(s) in %s; keeping policy version %s",
            len(refused.errors),
            directory,
            current.version,
        )
        for defect in refused.errors:
            log.error("%s", defect)
        return False
    if proposed.version == current.version:
        log.info("policies unchanged (version %s)", current.version)
        return True
    try:
        holder.replace_policies(proposed)
    except PolicySetError as refused:
        # The holder checks the set against the stored data (bounds it may not shrink).
        log.error(
            "policy reload refused: %d defect(s) against stored data; keeping policy version %s",
            len(refused.errors),
            current.version,
        )
        for defect in refused.errors:
            log.error("%s", defect)
        return False
    for change in policy_changes(current, proposed):
        log.info("policy change: %s", change)
    log.info("policies reloaded: version %s -> %s", current.version, proposed.version)
    return True
