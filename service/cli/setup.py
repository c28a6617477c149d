"""dpx init and dpx demo-data: setting up a deployment."""

from __future__ import annotations

import io
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from service.cli import deployment, fail, friendly, main, settings
from service.components import Components
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from service.policy.model import DatasetPolicy
from service.private_files import make_private
from service.store.batches import StoredBatch
from service.store.demo import generate_contacts
from service.store.ingest import parse_batch


@main.command()
@friendly
def init() -> None:
    """Create the data dir (0700), the keyring (0600) and the database schema; safe to repeat."""
    current = settings()
    make_private(current.data_dir)
    if current.keyring_path.exists():
        Keyring.load(current.keyring_path, current.keyring_passphrase)
        click.echo(f"keyring: {current.keyring_path} (exists)")
    else:
        current.keyring_path.parent.mkdir(parents=True, exist_ok=True)
        Keyring.create(current.keyring_path, current.keyring_passphrase)
        click.echo(f"keyring: {current.keyring_path} (created, mode 0600)")
    database = Database(current.database_url)
    upgrade(database)
    database.dispose()
    click.echo("database: schema is current")


@main.command("demo-data")
@click.option("--dataset", "dataset_id", required=True, help="dataset id from policies/datasets")
@click.option("--contacts", default=50_000, show_default=True, type=click.IntRange(1, 20_000_000))
@click.option("--seed", default=2024, show_default=True, type=int)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a CSV file instead of storing a batch",
)
@friendly
def demo_data(dataset_id: str, contacts: int, seed: int, out: Path | None) -> None:
    """Generate SYNTHETIC helpline contacts (never real data) and store or write them."""
    with deployment() as c:
        dataset = c.exchange.policies.datasets.get(dataset_id)
        if dataset is None:
            fail(f"no dataset {dataset_id!r} in {c.settings.policy_dir}/datasets")
            return
        batch = _generate(c, dataset, contacts=contacts, seed=seed, out=out)
    if batch is None:
        click.echo(f"wrote {contacts} synthetic contacts to {out}")
        return
    click.echo(
        f"stored synthetic batch {batch.batch_id} in {dataset.id}: {batch.rows} contacts, "
        f"{batch.cells} cells; {batch.truncated} contacts dropped by the person bound "
        f"(a person's contacts beyond max_contacts_per_person = "
        f"{dataset.max_contacts_per_person}, the bound the privacy guarantee relies on)"
    )


def _generate(
    c: Components, dataset: DatasetPolicy, *, contacts: int, seed: int, out: Path | None
) -> StoredBatch | None:
    """Generate the synthetic contacts, then write them to ``out`` or store them as a batch."""
    # Progress goes to standard error: standard output stays one result line for scripts.
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        steps = progress.add_task(
            f"generating {contacts:,} synthetic contacts", total=2 if out is not None else 4
        )
        frame = generate_contacts(dataset, contacts=contacts, seed=seed)
        progress.advance(steps)
        if out is not None:
            progress.update(steps, description=f"writing {out}")
            frame.write_csv(out)
            progress.advance(steps)
            return None
        progress.update(steps, description="encoding as CSV")
        buffer = io.BytesIO()
        frame.write_csv(buffer)
        progress.advance(steps)
        progress.update(steps, description="validating and aggregating into cells")
        aggregated = parse_batch(
            buffer.getvalue(), content_type="text/csv", form="contacts", dataset=dataset
        )
        progress.advance(steps)
        progress.update(steps, description="encrypting and storing the batch")
        batch = c.store.add(dataset, aggregated, form="contacts", actor="admin:demo-data")
        progress.advance(steps)
        return batch
