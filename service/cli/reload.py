"""dpx reload: put edited policy files in force in the running service, and say whether it did."""

from __future__ import annotations

import os
import signal
import time

import click

from service.cli import fail, friendly, main, settings
from service.policy.reload import ReloadOutcome


@main.command("reload")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    help="seconds to wait for the service's answer",
)
@friendly
def reload(timeout: float) -> None:
    """Send SIGHUP to the running gunicorn master and report whether the new policy set was
    accepted or refused, and why. Exits 1 when it was refused."""
    current = settings()
    pid_file, status_file = current.pid_file, current.reload_status_file
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        fail(f"no running dpx: {pid_file} is missing or unreadable (is the service started?)")
        return
    before = status_file.stat().st_mtime_ns if status_file.exists() else None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        fail(f"no running dpx: {pid_file} names process {pid}, which does not exist")
    except PermissionError:
        fail(f"not allowed to signal process {pid} (run as the service's user)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status_file.exists() and status_file.stat().st_mtime_ns != before:
            break
        time.sleep(0.1)
    else:
        fail(f"the service did not answer within {timeout:g} s; see its log")
    outcome = ReloadOutcome.read(status_file)
    if not outcome.accepted:
        click.echo(
            f"refused: {len(outcome.defects)} defect(s); policy version {outcome.version} "
            "stays in force (recorded in the audit log)"
        )
        for defect in outcome.defects:
            click.echo(f"  {defect}")
        raise SystemExit(1)
    if outcome.version == outcome.previous:
        click.echo(f"accepted: no change (policy version {outcome.version})")
        return
    click.echo(f"accepted: policy version {outcome.previous} -> {outcome.version}")
    for change in outcome.changes:
        click.echo(f"  {change}")
