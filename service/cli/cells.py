"""dpx cells: rebuild a dataset's merged cells from its batches, and check that both agree."""

from __future__ import annotations

import click

from service.cli import deployment, fail, friendly, main


@main.group("cells")
def cells_group() -> None:
    """The merged cells that queries read: one sealed sum of every batch per dataset."""


@cells_group.command("rebuild")
@click.argument("dataset_id", metavar="DATASET")
@friendly
def rebuild(dataset_id: str) -> None:
    """Replace DATASET's merged cells by the sum of its batches (after an upgrade from a
    dpx without merged cells, or when `dpx cells check` finds a difference)."""
    with deployment() as c:
        dataset = c.exchange.dataset(dataset_id)
        summed = c.store.rebuild_cells(dataset, actor="admin:cli")
        check = c.store.check_cells(dataset)
    click.echo(
        f"rebuilt the merged cells of {dataset.id} from {summed} batches: {check.cells} cells"
    )
    if not check.agree:
        fail(f"{dataset.id}: the merged cells still differ from the batches after the rebuild")


@cells_group.command("check")
@click.argument("dataset_id", metavar="[DATASET]", required=False)
@friendly
def check(dataset_id: str | None) -> None:
    """Check that the merged cells of DATASET (default: every dataset) equal the sum of its
    batches; exit 1 naming each dataset where they do not. Prints counts only, no values."""
    with deployment() as c:
        datasets = (
            [c.exchange.dataset(dataset_id)]
            if dataset_id is not None
            else list(c.exchange.policies.datasets.values())
        )
        checks = [c.store.check_cells(dataset) for dataset in datasets]
    bad = []
    for result in checks:
        if result.agree or (not result.stored and result.batches == 0):
            click.echo(f"{result.dataset}: agree ({result.batches} batches, {result.cells} cells)")
            continue
        bad.append(result.dataset)
        if not result.stored:
            click.echo(f"{result.dataset}: no merged cells for {result.batches} batches")
        else:
            click.echo(
                f"{result.dataset}: {result.differing} of {result.cells} cells differ from "
                f"the sum of {result.batches} batches"
            )
    if bad:
        fail(f"merged cells differ from the batches in {', '.join(bad)}; run dpx cells rebuild")
