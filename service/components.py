"""The domain services of one dpx deployment, built from settings.

Both the web app (``service.app.create_app``) and the ``dpx`` CLI build their services
here, so a CLI command and a request see the same database, keyring, policies and audit
chain, wired the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.audit.log import AuditLog
from service.auth.registry import TokenRegistry
from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import NotInitialised, require_current
from service.exchange import Exchange
from service.ledger.budgets import Ledger
from service.ledger.releases import ReleaseStore
from service.policy.errors import PolicySetError
from service.policy.loader import load_policies
from service.private_files import make_private
from service.store.batches import BatchStore
from service.store.bounds import put_in_force, stored_data_defects
from service.store.synopses import SynopsisStore
from service.synopses import Synopses


@dataclass
class Components:
    settings: Settings
    database: Database
    keyring: Keyring
    audit: AuditLog
    tokens: TokenRegistry
    store: BatchStore
    ledger: Ledger
    releases: ReleaseStore
    exchange: Exchange
    synopses: Synopses

    @classmethod
    def open(cls, settings: Settings, *, serving: bool = True) -> Components:
        """Load the keyring and policies and connect to the database; raise if any fails,
        if the database does not carry the current schema (``NotInitialised``), or
        (``PolicySetError``) if the policies shrink bounds that stored batches hold or
        change the definition of a dataset with charges.

        When ``serving``, their bounds then become the ones in force (``store.bounds``), as
        at a reload; a one-off command only checks them, so that running it with a policy
        directory edited but not yet reloaded leaves the service's uploads alone (its own
        uploads are refused while its bounds differ from those in force).

        First the data directory and everything created from now on becomes private (0700
        and 0600): this runs at the start of the service and of every ``dpx`` command.
        """
        make_private(settings.data_dir)
        keyring = Keyring.load(settings.keyring_path, settings.keyring_passphrase)
        policies = load_policies(settings.policy_dir)
        database = Database(settings.database_url)
        try:
            require_current(database)
        except NotInitialised:
            database.dispose()
            raise
        audit = AuditLog(
            database, keyring, settings.audit_checkpoint_path, settings.audit_checkpoint_every
        )
        # A start refuses the set as a reload would (stored data was bounded by more), and
        # otherwise puts its bounds in force as a reload does, under the audit head.
        if serving:
            with database.write() as conn:
                audit.hold_head(conn)
                shrunk = put_in_force(conn, policies)
        else:
            shrunk = stored_data_defects(database, policies)
        if shrunk:
            database.dispose()
            raise PolicySetError(shrunk)
        store = BatchStore(database, keyring, audit)
        ledger = Ledger(database)
        releases = ReleaseStore(database)
        exchange = Exchange(
            database=database,
            keyring=keyring,
            policies=policies,
            store=store,
            ledger=ledger,
            releases=releases,
            audit=audit,
            max_cells=settings.max_cells,
        )
        synopses = Synopses(exchange, SynopsisStore(database, keyring))
        exchange.synopses = synopses
        return cls(
            settings=settings,
            database=database,
            keyring=keyring,
            audit=audit,
            tokens=TokenRegistry(database, audit),
            store=store,
            ledger=ledger,
            releases=releases,
            exchange=exchange,
            synopses=synopses,
        )
