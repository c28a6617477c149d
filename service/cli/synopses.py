"""dpx synopsis commands: build a dataset's declared synopsis, list every synopsis."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.cli import deployment, fail, friendly, main
from service.policy.amounts import amount_text
from service.synopses import OnStep, SynopsisRefused


@main.group("synopsis")
def synopsis_group() -> None:
    """Synopses: marginals measured once, from which partners' questions are answered free."""


@synopsis_group.command("build")
@click.argument("dataset")
@friendly
def build(dataset: str) -> None:
    """Charge DATASET's global budget the synopsis budget, measure its declared marginals
    and store one consistent integer table. A rebuild supersedes the previous synopsis;
    releases answered from it stay readable. Refused, charging nothing, when the global
    budget has no room."""
    with deployment() as c, _progress() as on_step:
        try:
            built = c.synopses.build(dataset, actor="admin:cli", on_step=on_step)
        except SynopsisRefused as refused:
            fail(f"synopsis build refused: {refused}")
            return
    stored, unit = built.stored, built.unit
    shares = ", ".join(
        f"[{', '.join(m)}] {amount_text(share)}"
        for m, share in zip(stored.marginals, built.shares, strict=True)
    )
    click.echo(
        f"built {stored.synopsis_id} for {stored.dataset} in {stored.build_seconds:.2f} s: "
        f"{len(stored.batches)} batches, {unit} {amount_text(stored.cost)} charged ({shares}); "
        f"global budget left: {unit} {float(built.global_remaining):g}"
    )


@synopsis_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dataset")
@friendly
def list_synopses(as_json: bool) -> None:
    """Each dataset that declares a synopsis: marginals, newest build, cost, staleness."""
    with deployment() as c:
        datasets = sorted(c.exchange.policies.datasets.values(), key=lambda d: d.id)
        views = [(d, c.synopses.describe(d)) for d in datasets]
    rows = [(d, view) for d, view in views if view is not None]
    if as_json:
        for d, view in rows:
            click.echo(json.dumps({"dataset": d.id, **(view or {})}, sort_keys=True))
        return
    if not rows:
        click.echo("no dataset declares a synopsis")
        return
    click.echo("dataset\tsynopsis\tbuilt_at\tcost\tstale\tmarginals")
    for d, view in rows:
        assert view is not None  # noqa: S101 - filtered above
        marginals = "; ".join(",".join(m) for m in view["marginals"])
        built = view["built"]
        if built is None:
            click.echo(f"{d.id}\t-\tnot built\t-\t-\t{marginals}")
            continue
        cost = " ".join(f"{unit} {amount:g}" for unit, amount in built["cost"].items())
        stale = "stale" if built["stale"] else "current"
        click.echo(
            f"{d.id}\t{built['synopsis_id']}\t{built['built_at']}\t{cost}\t{stale}\t{marginals}"
        )


@contextmanager
def _progress() -> Iterator[OnStep]:
    """A rich progress bar on a terminal; otherwise one plain line per step on stderr."""
    if sys.stderr.isatty():
        columns = (
            TextColumn("synopsis"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[step]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("build", total=4, step="pricing")

            def show(what: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, step=what)

            yield show
        return

    def log(what: str, done: int, total: int) -> None:
        click.echo(f"[{done}/{total}] {what}", err=True)

    yield log
