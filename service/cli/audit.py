"""dpx verify-audit and dpx audit export."""

from __future__ import annotations

import json
from datetime import datetime

import click

from service.cli import deployment, fail, friendly, main
from service.database.timestamps import as_utc


@main.command("verify-audit")
@friendly
def verify_audit() -> None:
    """Check the whole audit chain and its signed checkpoints; name the first bad entry."""
    with deployment() as c:
        result = c.audit.verify()
    if not result.ok:
        fail(f"audit log is NOT intact: {result.reason} (first bad entry: {result.first_bad})")
    click.echo(f"audit log intact: {result.entries} entries")


@main.group("audit")
def audit_group() -> None:
    """Read the audit log."""


@audit_group.command("export")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]),
    help="only entries at or after this UTC date or time, e.g. 2026-01-31",
)
@friendly
def export(since: datetime | None) -> None:
    """Entries as JSON lines, oldest first: seq, at, actor, action, dataset, details and
    the chain fields prev_mac and mac, so that an export can be checked against the chain."""
    start = as_utc(since) if since is not None else None
    with deployment() as c:
        entries = list(c.audit.entries(since=start))
    for entry in entries:
        line = dict(entry.body(), prev_mac=entry.prev_mac, mac=entry.mac)
        click.echo(json.dumps(line, sort_keys=True, ensure_ascii=False))
