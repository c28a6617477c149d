"""The policy set in force in this process, and the reload that replaces it all or nothing.

A reload swaps the whole set at once, so whoever reads ``policies`` holds one complete,
validated set; a request reads it once and keeps that snapshot to the end (see
``service.exchange``), so a reload meanwhile cannot give one answer two policies.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from service.audit.log import AuditLog
from service.database.engine import Database
from service.policy.changes import budget_changes
from service.policy.errors import PolicySetError
from service.policy.model import PolicySet
from service.store.bounds import put_in_force


class LivePolicies:
    def __init__(self, database: Database, audit: AuditLog, policies: PolicySet) -> None:
        self.database = database
        self.audit = audit
        self._policies = policies
        self._lock = threading.Lock()

    @property
    def policies(self) -> PolicySet:
        return self._policies

    def replace_policies(self, policies: PolicySet, *, actor: str = "admin:reload") -> None:
        """Swap in a validated policy set (all or nothing) and record it in the audit log,
        with every budget it changes (so budgets can be shown as they were at any time).

        Raises ``PolicySetError`` (and keeps the set in force) when the new set shrinks a
        bound below what stored batches were stored under. The check, the audit entry and
        the record of the bounds in force are one transaction holding the audit head, so an
        upload truncated under the previous bounds commits before it (and is checked) or
        after it (and is refused), in every worker and instance.
        """
        with self._lock:
            previous = self._policies
            with self.database.write() as conn:
                self.audit.append(
                    conn,
                    actor=actor,
                    action="policy.reload",
                    details={
                        "from": previous.version,
                        "to": policies.version,
                        "budgets": budget_changes(previous, policies),
                    },
                )
                shrunk = put_in_force(conn, policies)
                if shrunk:
                    # Raising rolls the entry back; the caller audits the refusal.
                    raise PolicySetError(shrunk)
            self._policies = policies

    def refuse_policies(self, defects: Sequence[str], *, actor: str = "admin:reload") -> None:
        """Record in the audit log that a proposed policy set was refused, and why."""
        with self.database.write() as conn:
            self.audit.append(
                conn,
                actor=actor,
                action="policy.reload_refused",
                details={"kept": self._policies.version, "defects": list(defects)},
            )
