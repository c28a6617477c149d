"""Benchmark: the cells a query reads, with 1 and with 301 stored batches.

Queries read a dataset's merged cells (one sealed document, decrypted once per change and
cached by version), so reading them must cost the same whatever the number of batches. The
reference is summing every batch's cells, as a store without merged cells must.

Goal: reading cells with 301 batches within 10% of reading them with 1.

Run: scripts/bench cells [--batches N] [--contacts N] [--runs N]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.audit.log import AuditLog
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from service.policy.loader import load_policies
from service.store.batches import BatchStore
from service.store.cells import merge_cells
from service.store.demo import generate_contacts
from service.store.ingest import parse_batch

ROOT = Path(__file__).resolve().parent.parent


def p50_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=300, help="small batches added")
    parser.add_argument("--contacts", type=int, default=100_000, help="contacts of batch 1")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    dataset = load_policies(ROOT / "policies").datasets["uk-helpline-2024"]
    work = Path(tempfile.mkdtemp(prefix="dpx-bench-cells-"))
    try:
        keyring = Keyring.create(work / "keyring.json")
        database = Database(f"sqlite:///{work / 'dpx.sqlite3'}")
        upgrade(database)
        store = BatchStore(database, keyring, AuditLog(database, keyring, work / "cp.jsonl"))

        def upload(contacts: int, seed: int) -> None:
            buffer = io.BytesIO()
            generate_contacts(dataset, contacts=contacts, seed=seed).drop("person").write_csv(
                buffer
            )
            batch = parse_batch(
                buffer.getvalue(), content_type="text/csv", form="contacts", dataset=dataset
            )
            store.add(dataset, batch, form="contacts", actor="bench")

        upload(args.contacts, 1)
        one = p50_ms(lambda: store.cells(dataset), args.runs)
        for seed in range(args.batches):
            upload(50, seed + 2)
        many = p50_ms(lambda: store.cells(dataset), args.runs)
        fresh = BatchStore(database, keyring, store.audit)
        start = time.perf_counter()
        fresh.cells(dataset)
        first = (time.perf_counter() - start) * 1000
        summed = p50_ms(
            lambda: merge_cells(store._batch_frames(dataset), dataset),  # noqa: SLF001
            max(args.runs // 10, 5),
        )
        cells = store.cells(dataset).height
        print(f"cells benchmark: uk-helpline-2024, {cells:,} merged cells, SQLite, p50 of runs")
        print(f"  cells() with 1 batch:                      {one:8.3f} ms")
        print(f"  cells() with {args.batches + 1} batches:                 {many:8.3f} ms")
        print(f"  ratio:                                     {many / one:8.2f}x")
        print(f"  first cells() in a new process (decrypt):  {first:8.3f} ms")
        print(f"  reference, summing {args.batches + 1} batches' cells:     {summed:8.3f} ms")
        verdict = "met" if many <= one * 1.10 else "missed"
        print(f"  goal: {args.batches + 1} batches within 10% of 1: {verdict}")
        database.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
