"""Benchmark: 1,000,000 synthetic contact records as CSV through validate -> aggregate ->
encrypt -> store, next to Polars alone reading and grouping the same file, in one run.

Run: scripts/bench ingest [--contacts N]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from service.audit.log import AuditLog
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from service.policy.loader import load_policies
from service.store.batches import BatchStore
from service.store.demo import generate_contacts
from service.store.ingest import parse_batch

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dataset", default="uk-helpline-2024")
    args = parser.parse_args()

    dataset = load_policies(ROOT / "policies").datasets[args.dataset]
    work = Path(tempfile.mkdtemp(prefix="dpx-bench-ingest-"))
    try:
        csv_path = work / "contacts.csv"
        generate_contacts(dataset, contacts=args.contacts, seed=7).write_csv(csv_path)
        body = csv_path.read_bytes()
        dims = [d.name for d in dataset.dimensions]

        keyring = Keyring.create(work / "keyring.json")
        database = Database(f"sqlite:///{work / 'dpx.sqlite3'}")
        upgrade(database)
        store = BatchStore(database, keyring, AuditLog(database, keyring, work / "cp.jsonl"))

        polars_times, dpx_times, stages = [], [], {"parse+validate+aggregate": [], "seal+store": []}
        for _ in range(args.repeat):
            start = time.perf_counter()
            pl.read_csv(csv_path).group_by(dims).agg(pl.len(), pl.col("minutes").sum())
            polars_times.append(time.perf_counter() - start)

            start = time.perf_counter()
            aggregated = parse_batch(
                body, content_type="text/csv", form="contacts", dataset=dataset
            )
            middle = time.perf_counter()
            store.add(dataset, aggregated, form="contacts", actor="bench")
            end = time.perf_counter()
            dpx_times.append(end - start)
            stages["parse+validate+aggregate"].append(middle - start)
            stages["seal+store"].append(end - middle)

        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        dpx = statistics.median(dpx_times)
        reference = statistics.median(polars_times)
        print(
            f"ingest benchmark: {args.contacts:,} contact rows, {len(body) / 2**20:.1f} MiB CSV, "
            f"median of {args.repeat}"
        )
        print(
            f"  dpx validate+aggregate+encrypt+store: {dpx:6.3f} s  "
            f"{args.contacts / dpx:12,.0f} rows/s"
        )
        for name, times in stages.items():
            print(f"    {name:26s} {statistics.median(times):6.3f} s")
        print(
            f"  polars read_csv + group_by alone:     {reference:6.3f} s  "
            f"{args.contacts / reference:12,.0f} rows/s"
        )
        print(f"  ratio dpx / polars-alone: {dpx / reference:.2f}x")
        print(f"  peak memory (max RSS): {peak_mib:,.0f} MiB")
        verdict = "meets" if dpx <= GOAL_SECONDS else "misses"
        print(f"  goal <= {GOAL_SECONDS:.0f} s total: {verdict} ({dpx:.2f} s)")
        database.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
