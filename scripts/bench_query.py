"""Benchmark: charged releases through HTTP and gunicorn, next to what they cannot beat.

One run, on one synthetic dataset (``dpx demo-data``, 1,000,000 contacts by default), for a
``count`` grouped by month x channel (48 cells), prints side by side:

* the service: distinct queries over HTTP to gunicorn (2 workers), each one charged,
  noised, signed and stored; p50/p95 latency with one client and with 8 concurrent clients,
  and charged releases per second with 8 clients;
* (a) the physical floor of a charged release, in-process: Polars over the stored cells,
  OpenDP noise on the 48 aggregates, and one durable SQLite commit (WAL, synchronous=FULL)
  of a small row;
* (b) OpenDP's Context API over the row-level contacts (the Polars plugin, one 48-cell
  histogram), timed a few times only: it takes seconds per release.

and the ratios against the goals: p50 <= 3x (a); the service >= 100x faster than (b);
>= 100 charged releases/s with 8 clients. Everything lives in a temporary directory with its
own policies (a grant big enough for any number of queries) and is removed afterwards.

Run: scripts/bench query [--contacts N] [--queries N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import polars as pl
import requests
import yaml

from service.components import Components
from service.config import Settings
from service.policy.model import CONTACTS_COLUMN, DatasetPolicy
from service.store.demo import generate_contacts

dp.enable_features("contrib")

ROOT = Path(__file__).resolve().parent.parent
DATASET = "uk-helpline-2024"
PARTNER = "bench"
GROUP_BY = ["month", "channel"]
SEED = 2024
# Distinct queries differ only in their cost (one nano-epsilon apart), so each is charged
# anew while every one does the same work: 48 cells, the same sensitivity.
BASE_EPSILON = Decimal("0.001")
STEP_EPSILON = Decimal("0.000000001")
GOAL_FLOOR_RATIO = 3.0
GOAL_CONTEXT_RATIO = 100.0
GOAL_RELEASES_PER_SECOND = 100.0


@dataclass(frozen=True)
class Phase:
    """Latencies (seconds) of the charged releases of one load phase, and its wall time."""

    clients: int
    latencies: list[float]
    wall: float
    failures: int

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (nan when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- the deployment under test ------------------------------------------------------------------


def write_policies(target: Path) -> None:
    """The demo dataset with a global budget and a grant too large to run out in a bench."""
    (target / "datasets").mkdir(parents=True)
    (target / "partners").mkdir()
    source = yaml.safe_load((ROOT / "policies/datasets" / f"{DATASET}.yaml").read_text())
    source["privacy"]["global_budget"] = {"epsilon": 1_000_000}
    (target / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(source, sort_keys=False))
    partner = {
        "id": PARTNER,
        "name": "Benchmark partner",
        "jurisdiction": "GB",
        "grants": [
            {
                "dataset": DATASET,
                "budget": {"epsilon": 1_000_000},
                "statistics": ["count"],
                "dimensions": GROUP_BY,
            }
        ],
    }
    (target / "partners" / f"{PARTNER}.yaml").write_text(yaml.safe_dump(partner, sort_keys=False))


def dpx(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(ROOT / ".venv/bin/dpx"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"dpx {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_server(env: dict[str, str], workers: int, log: Path) -> Server:
    port = free_port()
    server_env = dict(env, DPX_BIND=f"127.0.0.1:{port}", DPX_WORKERS=str(workers))
    with log.open("wb") as out:
        # Access logs off: the bench measures the service, not line writes to a file.
        process = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/gunicorn"),
                "--config",
                str(ROOT / "gunicorn.conf.py"),
                "--access-logfile",
                "/dev/null",
                "service.wsgi:app",
            ],
            cwd=ROOT,
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.stop()
    sys.exit(f"gunicorn was not ready within 120 s:\n{log.read_text()}")


# -- load ---------------------------------------------------------------------------------------


def distinct_costs() -> Iterator[str]:
    for index in itertools.count():
        yield str(BASE_EPSILON + index * STEP_EPSILON)


def run_phase(url: str, token: str, costs: Iterator[str], *, queries: int, clients: int) -> Phase:
    """``queries`` distinct charged queries from ``clients`` concurrent clients."""
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    local = threading.local()

    def one(cost: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = {"dataset": DATASET, "statistic": "count", "group_by": GROUP_BY, "epsilon": cost}
        start = time.perf_counter()
        response = session.post(
            f"{url}/v1/queries",
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        )
        elapsed = time.perf_counter() - start
        with lock:
            if response.status_code == 201:
                latencies.append(elapsed)
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

    with lock:
        batch = [next(costs) for _ in range(queries)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, batch))
    wall = time.perf_counter() - start
    if failures:
        print(f"  {len(failures)} queries failed, first: {failures[0]}", file=sys.stderr)
    return Phase(clients, latencies, wall, len(failures))


# -- (a) the physical floor ---------------------------------------------------------------------


def timed(function: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def measure_floor(
    cells: pl.DataFrame, dataset: DatasetPolicy, work: Path, runs: int
) -> dict[str, float]:
    """Median seconds of each step of a charged release done with the bare primitives."""
    domain = pl.DataFrame(
        list(itertools.product(*(dataset.dimension(name).values for name in GROUP_BY))),
        schema=GROUP_BY,
        orient="row",
    )
    sensitivity = dataset.max_contacts_per_person
    scale = sensitivity / float(BASE_EPSILON)
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    connection = sqlite3.connect(work / "floor.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE charges (id INTEGER PRIMARY KEY, release TEXT, nano INT)")
    counter = itertools.count()

    def aggregate() -> list[int]:
        grouped = cells.group_by(GROUP_BY).agg(pl.col(CONTACTS_COLUMN).sum())
        full = domain.join(grouped, on=GROUP_BY, how="left").fill_null(0)
        return [int(v) for v in full[CONTACTS_COLUMN].to_list()]

    aggregates = aggregate()

    def noise() -> list[int]:
        measurement = space >> dp.m.then_laplace(scale=scale)
        released: list[int] = measurement(aggregates)
        return released

    def commit() -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO charges (release, nano) VALUES (?, ?)",
            (f"rel_{next(counter):020d}", 1_000_000),
        )
        connection.execute("COMMIT")

    def release() -> None:
        aggregate()
        noise()
        commit()

    try:
        return {
            "polars over stored cells": statistics.median(timed(aggregate, runs)),
            "OpenDP build + noise": statistics.median(timed(noise, runs)),
            "durable SQLite commit": statistics.median(timed(commit, runs)),
            "total": statistics.median(timed(release, runs)),
        }
    finally:
        connection.close()


# -- (b) OpenDP's Context API over the rows ------------------------------------------------------


def measure_context(rows: pl.DataFrame, dataset: DatasetPolicy, runs: int) -> list[float]:
    """Seconds per release of one 48-cell histogram with ``dp.Context`` over the rows."""
    frame = rows.select(GROUP_BY).lazy()
    keys = pl.DataFrame(
        list(itertools.product(*(dataset.dimension(name).values for name in GROUP_BY))),
        schema=GROUP_BY,
        orient="row",
    )

    def release() -> None:
        context = dp.Context.compositor(
            data=frame,
            privacy_unit=dp.unit_of(contributions=dataset.max_contacts_per_person),
            privacy_loss=dp.loss_of(epsilon=float(BASE_EPSILON)),
            split_evenly_over=1,
        )
        query = context.query().group_by(GROUP_BY).agg(dp.len(signed=False)).with_keys(keys)
        query.release().collect()

    return timed(release, runs)


# -- report --------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def report(
    args: argparse.Namespace,
    floor: dict[str, float],
    phases: list[Phase],
    context: list[float],
    cells: int,
) -> dict[str, Any]:
    context_median = statistics.median(context)
    sequential, concurrent = phases
    print(
        f"\nquery benchmark: {args.contacts:,} synthetic contacts ({cells:,} stored cells), "
        f"count by month x channel (48 cells), gunicorn {args.workers} workers"
    )
    print("\n  service over HTTP (distinct queries, each charged, noised, signed, stored)")
    for phase in phases:
        print(
            f"    {phase.clients} client(s): {len(phase.latencies):5d} releases  "
            f"p50 {ms(phase.p50)}  p95 {ms(phase.p95)}  {phase.per_second:8.1f} releases/s"
            + (f"  ({phase.failures} failed)" if phase.failures else "")
        )
    print(f"\n  (a) physical floor of a charged release, in-process (median of {args.floor_runs})")
    for step, seconds in floor.items():
        print(f"    {step:28s} {ms(seconds)}")
    print(
        f"\n  (b) OpenDP Context API over the {args.contacts:,} rows "
        f"(median of {len(context)}): {ms(context_median)}"
    )
    floor_total = floor["total"]
    print("\n  ratios and goals")
    for phase in phases:
        ratio = phase.p50 / floor_total
        print(
            f"    p50 / floor, {phase.clients} client(s):     {ratio:8.1f}x   goal <= "
            f"{GOAL_FLOOR_RATIO:g}x: {verdict(ratio <= GOAL_FLOOR_RATIO)}"
        )
    for phase in phases:
        ratio = context_median / phase.p50
        print(
            f"    Context / p50, {phase.clients} client(s):   {ratio:8.1f}x   goal >= "
            f"{GOAL_CONTEXT_RATIO:g}x: {verdict(ratio >= GOAL_CONTEXT_RATIO)}"
        )
    rate = concurrent.per_second
    print(
        f"    releases/s, {concurrent.clients} clients:      {rate:8.1f}    goal >= "
        f"{GOAL_RELEASES_PER_SECOND:g}/s: {verdict(rate >= GOAL_RELEASES_PER_SECOND)}"
    )
    return {
        "contacts": args.contacts,
        "stored_cells": cells,
        "workers": args.workers,
        "phases": [
            {
                "clients": p.clients,
                "releases": len(p.latencies),
                "failed": p.failures,
                "p50_s": p.p50,
                "p95_s": p.p95,
                "releases_per_s": p.per_second,
            }
            for p in phases
        ],
        "floor_s": floor,
        "context_s": context,
        "ratios": {
            "p50_over_floor": [p.p50 / floor_total for p in phases],
            "context_over_p50": [context_median / p.p50 for p in phases],
            "releases_per_s": rate,
        },
        "sequential_p50_s": sequential.p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Charged releases over HTTP next to the physical floor and the Context API."
    )
    parser.add_argument(
        "--contacts",
        type=int,
        default=1_000_000,
        help="synthetic contacts in the dataset (default 1,000,000)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=2000,
        help="distinct queries with 8 clients (default 2000); a fifth of it, "
        "at least 20, with one client",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--floor-runs", type=int, default=200)
    parser.add_argument("--context-runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if (
        min(
            args.contacts,
            args.queries,
            args.clients,
            args.workers,
            args.floor_runs,
            args.context_runs,
        )
        < 1
    ):
        parser.error("every count must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="dpx-bench-query-"))
    try:
        policy_dir = work / "policies"
        write_policies(policy_dir)
        data_dir = work / "var"
        env = dict(
            os.environ,
            DPX_DATA_DIR=str(data_dir),
            DPX_POLICY_DIR=str(policy_dir),
            DPX_DATABASE_URL=f"sqlite:///{data_dir / 'dpx.sqlite3'}",
            # The bench measures the service at full load, not its rate limits.
            DPX_RATE_LIMIT_QUERIES="1000000 per minute",
        )
        env.pop("DPX_KEYRING", None)
        print(f"preparing {args.contacts:,} synthetic contacts in {work} ...", flush=True)
        dpx(env, "init")
        dpx(
            env,
            "demo-data",
            "--dataset",
            DATASET,
            "--contacts",
            str(args.contacts),
            "--seed",
            str(SEED),
        )
        token = dpx(env, "issue-token", "--partner", PARTNER).splitlines()[0]

        components = Components.open(Settings.from_env(env))
        dataset = components.exchange.dataset(DATASET)
        cells = components.store.cells(dataset)
        components.database.dispose()

        print("measuring the physical floor ...", flush=True)
        floor = measure_floor(cells, dataset, work, args.floor_runs)

        server = start_server(env, args.workers, work / "gunicorn.log")
        costs = distinct_costs()
        try:
            print("measuring the service over HTTP ...", flush=True)
            # Warm-up: every worker decrypts the cells once and builds its caches.
            run_phase(server.url, token, costs, queries=4 * args.workers, clients=args.workers)
            sequential = run_phase(
                server.url, token, costs, queries=max(20, args.queries // 5), clients=1
            )
            concurrent = run_phase(
                server.url, token, costs, queries=args.queries, clients=args.clients
            )
        finally:
            server.stop()

        print(f"measuring OpenDP's Context API ({args.context_runs} runs) ...", flush=True)
        rows = generate_contacts(dataset, contacts=args.contacts, seed=SEED)
        context = measure_context(rows, dataset, args.context_runs)

        figures = report(args, floor, [sequential, concurrent], context, cells.height)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
