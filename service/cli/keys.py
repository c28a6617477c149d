"""dpx key commands: rotate-keys, keys list, rotate-signing-key."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service import signing_keys
from service.cli import deployment, fail, friendly, main
from service.store.rotation import DEFAULT_BATCH_SIZE, KeyRotation, OnProgress


@contextmanager
def _rotation() -> Iterator[KeyRotation]:
    """The deployment's key rotation; its database connections are closed afterwards."""
    with deployment() as c:
        yield KeyRotation(c.database, c.keyring, c.audit)


@main.command("rotate-keys")
@click.option(
    "--reencrypt",
    is_flag=True,
    help="also replace every data key and encrypt the cells again (slower; for a "
    "data key that may have leaked)",
)
@click.option(
    "--retire",
    "retire_id",
    metavar="KEY_ID",
    help="only remove KEY_ID from the keyring; refused while any batch is under it",
)
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="batches moved per transaction",
)
@friendly
def rotate_keys(reencrypt: bool, retire_id: str | None, batch_size: int) -> None:
    """Rotate the key-encryption key without downtime.

    Adds a new KEK, makes it primary, saves the keyring, then rewraps every stored batch
    under it, BATCH-SIZE batches per transaction. The service keeps answering throughout;
    the old KEK still opens batches until it is retired.

    Resuming is the default: if a rotation was interrupted (killed, crashed, or batches are
    still under a KEK other than the primary), running rotate-keys again adds no key and
    finishes moving the batches to the current primary. Run it once more afterwards to
    rotate to yet another key. When it is done, retire the old key with
    `dpx rotate-keys --retire KEY_ID` (see `dpx keys list`).
    """
    if retire_id is not None and reencrypt:
        fail("--retire removes a key; give it without --reencrypt")
    with _rotation() as rotation:
        _rotate(rotation, reencrypt, retire_id, batch_size)


def _rotate(rotation: KeyRotation, reencrypt: bool, retire_id: str | None, batch_size: int) -> None:
    if retire_id is not None:
        rotation.retire(retire_id)
        click.echo(f"retired {retire_id}: removed from the keyring; nothing under it opens")
        return
    plan = rotation.start(reencrypt=reencrypt)
    verb = "re-encrypt" if plan.reencrypt else "rewrap"
    if plan.resumed:
        click.echo(f"resuming rotation to {plan.kek_id}: {plan.pending} batches left to {verb}")
    else:
        click.echo(
            f"rotating to {plan.kek_id} (new primary; was {plan.previous}): "
            f"{plan.pending} batches to {verb}"
        )
    with _progress(plan.pending) as on_progress:
        report = rotation.run(plan, batch_size=batch_size, on_progress=on_progress)
    rate = report.moved / report.seconds if report.seconds > 0 else 0.0
    click.echo(
        f"rotation to {report.kek_id} finished: {report.moved} batches moved in "
        f"{report.seconds:.2f} s ({rate:.0f}/s)"
    )
    old = [u.kek_id for u in rotation.usage() if u.kek_id != report.kek_id]
    if old:
        click.echo(
            f"retire old keys when no service needs them: "
            f"{', '.join(f'dpx rotate-keys --retire {k}' for k in old)}"
        )


@contextmanager
def _progress(total: int) -> Iterator[OnProgress]:
    """A rich progress bar on a terminal; otherwise a plain line at most once a second."""
    began = time.monotonic()
    if sys.stderr.isatty():
        columns = (
            TextColumn("rotating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("rotate", total=total, rate="")

            def show(done: int, of: int) -> None:
                elapsed = max(time.monotonic() - began, 1e-9)
                bar.update(task, completed=done, total=of, rate=f"{done / elapsed:.0f}/s")

            yield show
        return
    last = 0.0

    def log(done: int, of: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 1.0 or done >= of:
            last = now
            rate = done / max(now - began, 1e-9)
            click.echo(f"moved {done}/{of} batches ({rate:.0f}/s)")

    yield log


@main.group("keys")
def keys_group() -> None:
    """Inspect the key-encryption keys."""


@keys_group.command("list")
@friendly
def list_keys() -> None:
    """KEKs: id, status, created, and how many batches and sealed dataset documents each
    protects (no key material)."""
    with _rotation() as rotation:
        usages = rotation.usage()
    click.echo("kek_id\tstatus\tcreated\tbatches\tdocuments")
    for usage in usages:
        click.echo(
            f"{usage.kek_id}\t{usage.status}\t{usage.created}\t{usage.batches}\t{usage.documents}"
        )


@main.command("rotate-signing-key")
@friendly
def rotate_signing_key() -> None:
    """Make a fresh Ed25519 release-signing key current; the old one is retired but stays
    published at /v1/signing-keys, so releases it signed still verify."""
    with deployment() as c:
        current, retired = signing_keys.rotate_signing_key(c.database, c.keyring, c.audit)
    click.echo(f"signing key {current} is current; {retired} is retired and still published")
