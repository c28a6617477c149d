"""Benchmark: charged releases through HTTP and gunicorn, next to what they cannot beat.

One run, on one synthetic dataset (``dpx demo-data``, 1,000,000 contacts by default, one
batch; on SQLite also a copy of it under another id), for a ``count`` grouped by month x
channel (48 cells), prints side by side:

* the service on SQLite: distinct queries over HTTP to gunicorn (2 workers), each one
  charged, noised, signed and stored; p50/p95 latency with one client, and charged
  releases per second with 8 concurrent clients;
  each HTTP phase also prints the CPU time per release of the service's processes and of
  the load generator (http.client on keep-alive connections), which share the 2 cores;
* ``GET /healthz`` through the same gunicorn with 1 and 8 clients: the HTTP stack alone
  (gunicorn, Flask, flask-smorest, the rate limiter, metrics and logs), and the share of a
  release's CPU it takes;
* after 300 more small batches were uploaded to the copy, one client asking the copy and
  the original in turn (p50 with 301 batches over p50 with one, under the same machine
  load: the cost of a query should not grow with the number of batches);
* the service on PostgreSQL (``--postgres URL``, or ``DPX_TEST_DATABASE_URL``): two gunicorn
  instances over one database, charged releases per second with 8 clients;
* (a) the floor of a charged release, in-process: Polars over the stored cells, OpenDP
  noise on the 48 aggregates (measurement built and invoked), and one durable SQLite
  commit (WAL, synchronous=FULL) of a small row; timed step by step on its own, and for
  the ratios run in turn with the 1-client phase over HTTP and with (c), one floor release
  after each query, so that each ratio compares the two under the same machine load;
* (b) OpenDP's Context API over the row-level contacts (the Polars plugin, one 48-cell
  histogram), timed a few times only (it takes seconds per release), spread over the
  1-client phase over HTTP;
* (c) the 1-client release in-process, through Flask's test client: the whole application
  without sockets, gunicorn or the load generator, which shares the 2 cores.

and the ratios against the goals: p50 <= 2x (a); >= 300 charged releases/s with 8 clients;
p50 with 301 batches within 10% of p50 with one; the service >= 300x faster than (b).
Everything lives in a temporary directory (and, on PostgreSQL, a schema of its own) with
its own policies (a grant big enough for any number of queries) and is removed afterwards.

Run: scripts/bench query [--contacts N] [--queries N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
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
from dataclasses import dataclass, field
from decimal import Decimal
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
# The same policy and data under another id: it receives the extra small batches, so that
# one client can ask both datasets in turn and compare them under the same machine load.
BATCHED = "bench-batched"
PARTNER = "bench"
GROUP_BY = ["month", "channel"]
SEED = 2024
# Distinct queries differ only in their cost (one nano-epsilon apart), so each is charged
# anew while every one does the same work: 48 cells, the same sensitivity.
BASE_EPSILON = Decimal("0.001")
STEP_EPSILON = Decimal("0.000000001")
GOAL_FLOOR_RATIO = 2.0
GOAL_CONTEXT_RATIO = 300.0
GOAL_RELEASES_PER_SECOND = 300.0
GOAL_BATCH_GROWTH = 1.10


@dataclass(frozen=True)
class Phase:
    """Latencies (seconds) of the charged releases of one load phase, and its wall time."""

    clients: int
    latencies: list[float]
    wall: float
    failures: int
    # CPU seconds of the service's processes and of the load generator during the phase.
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    # Latencies by the label of their call (the dataset asked), in the order asked.
    labelled: dict[str, list[float]] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall

    def cpu_each(self, seconds: float) -> float:
        """``seconds`` of CPU per call of the phase, answered or failed."""
        return seconds / max(1, len(self.latencies) + self.failures)

    def part(self, label: str) -> Phase:
        """The answered calls labelled ``label`` alone (latencies only)."""
        latencies = self.labelled.get(label, [])
        return Phase(self.clients, latencies, sum(latencies) or float("nan"), 0)


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (nan when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- the deployment under test ------------------------------------------------------------------


def write_policies(target: Path) -> None:
    """The demo dataset, under its own id and as ``BATCHED``, with a global budget and a
    grant too large to run out in a bench."""
    (target / "datasets").mkdir(parents=True)
    (target / "partners").mkdir()
    source = yaml.safe_load((ROOT / "policies/datasets" / f"{DATASET}.yaml").read_text())
    source["privacy"]["global_budget"] = {"epsilon": 1_000_000}
    for dataset in (DATASET, BATCHED):
        source["id"] = dataset
        text = yaml.safe_dump(source, sort_keys=False)
        (target / "datasets" / f"{dataset}.yaml").write_text(text)
    partner = {
        "id": PARTNER,
        "name": "Benchmark partner",
        "jurisdiction": "GB",
        "grants": [
            {
                "dataset": dataset,
                "budget": {"epsilon": 1_000_000},
                "statistics": ["count"],
                "dimensions": GROUP_BY,
            }
            for dataset in (DATASET, BATCHED)
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


def cpu_seconds(root: int) -> float:
    """CPU seconds (user and system) used so far by process ``root`` and its children: a
    gunicorn master and its workers."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, _, rest = stat.read_text().partition(" (")
            fields = rest.rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while it was read
        if int(pid) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def start_server(
    env: dict[str, str], workers: int, log: Path, threads: int | None = None
) -> Server:
    port = free_port()
    server_env = dict(env, DPX_BIND=f"127.0.0.1:{port}", DPX_WORKERS=str(workers))
    if threads is not None:
        server_env["DPX_THREADS"] = str(threads)
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


def distinct_costs(start: int = 0) -> Iterator[str]:
    for index in itertools.count(start):
        yield str(BASE_EPSILON + index * STEP_EPSILON)


def query_body(cost: str, dataset: str = DATASET) -> dict[str, Any]:
    """The benchmark's question: a count by month x channel at ``cost`` epsilon."""
    return {"dataset": dataset, "statistic": "count", "group_by": GROUP_BY, "epsilon": cost}


@dataclass(frozen=True)
class Call:
    """One HTTP request of a load phase and the status that counts it as answered."""

    method: str
    path: str
    body: str | None
    expected: int
    label: str = ""


def run_phase(
    servers: list[Server],
    token: str,
    costs: Iterator[str],
    *,
    queries: int,
    clients: int,
    datasets: tuple[str, ...] = (DATASET,),
    between: Callable[[], float] | None = None,
) -> Phase:
    """``queries`` distinct charged queries from ``clients`` concurrent clients, spread over
    ``servers`` (client ``i`` talks to ``servers[i % len(servers)]``), asking ``datasets``
    in turn."""
    calls = [
        Call(
            "POST",
            "/v1/queries",
            json.dumps(query_body(cost, dataset)),
            201,
            dataset,
        )
        for cost, dataset in zip(
            itertools.islice(costs, queries), itertools.cycle(datasets), strict=False
        )
    ]
    return run_load(servers, calls, clients=clients, token=token, between=between)


def run_load(
    servers: list[Server],
    calls: list[Call],
    *,
    clients: int,
    token: str | None = None,
    between: Callable[[], float] | None = None,
) -> Phase:
    """``calls`` from ``clients`` concurrent clients, spread over ``servers``: latencies of
    the answered ones, wall time, and the CPU time of service and load generator.

    ``between`` runs after each call, outside its timing, and returns the CPU seconds it
    used: neither its time nor its CPU counts as the phase's."""
    urls = [server.url for server in servers]
    lock = threading.Lock()
    latencies: list[float] = []
    labelled: dict[str, list[float]] = {}
    failures: list[str] = []
    set_aside: list[tuple[float, float]] = []  # wall and CPU seconds spent in ``between``
    local = threading.local()
    assigned = itertools.count()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    def one(call: Call) -> None:
        # http.client on one keep-alive connection per client: the load generator shares the
        # 2 cores with the service, and requests spends about a millisecond of them per call.
        connection = getattr(local, "connection", None)
        if connection is None:
            url = urlsplit(urls[next(assigned) % len(urls)])
            connection = local.connection = HTTPConnection(
                url.hostname or "", url.port, timeout=120
            )
        start = time.perf_counter()
        connection.request(call.method, call.path, body=call.body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - start
        with lock:
            if response.status == call.expected:
                latencies.append(elapsed)
                labelled.setdefault(call.label, []).append(elapsed)
            else:
                failures.append(f"{response.status} {answer[:200]!r}")
        if between is not None:
            paused = time.perf_counter()
            cpu = between()
            with lock:
                set_aside.append((time.perf_counter() - paused, cpu))

    server_start = sum(cpu_seconds(server.process.pid) for server in servers)
    client_start = own_cpu_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, calls))
    wall = time.perf_counter() - start - sum(aside for aside, _ in set_aside)
    client_cpu = own_cpu_seconds() - client_start - sum(cpu for _, cpu in set_aside)
    server_cpu = sum(cpu_seconds(server.process.pid) for server in servers) - server_start
    if failures:
        print(f"  {len(failures)} requests failed, first: {failures[0]}", file=sys.stderr)
    return Phase(clients, latencies, wall, len(failures), server_cpu, client_cpu, labelled)


def upload_small_batches(url: str, owner: str, dataset: DatasetPolicy, batches: int) -> None:
    """``batches`` uploads of 20 contacts each to ``BATCHED``, as daily uploads would arrive."""
    months = dataset.dimension("month").values
    channels = dataset.dimension("channel").values
    session = requests.Session()
    for index in range(batches):
        records = [
            {
                "month": months[(index + n) % len(months)],
                "country": dataset.dimension("country").values[0],
                "channel": channels[n % len(channels)],
                "caller_type": dataset.dimension("caller_type").values[0],
                "referral_source": dataset.dimension("referral_source").values[0],
                "minutes": 10,
            }
            for n in range(20)
        ]
        response = session.post(
            # Small batches of the same shape: copies on purpose, not re-sent uploads.
            f"{url}/v1/datasets/{BATCHED}/batches?allow_duplicate=true",
            data=json.dumps(records),
            timeout=60,
            headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"},
        )
        if response.status_code != 201:
            sys.exit(f"batch upload failed: {response.status_code} {response.text[:300]}")


def measure_in_process(
    env: dict[str, str], token: str, queries: int, floor: Floor
) -> tuple[Phase, list[float]]:
    """The 1-client phase through Flask's test client: the whole application (token, limits,
    plan, stored-answer and budget reads, cells, noise, signature, durable commit) without
    sockets, gunicorn or a load generator sharing the cores; and the floor's releases run in
    turn with it."""
    from service.app import create_app

    client = create_app(Settings.from_env(env)).test_client()
    # Past every cost the HTTP phases asked, so that each query is charged anew.
    costs = distinct_costs(start=10_000_000)
    latencies: list[float] = []
    failures = 0
    for index in range(queries + 20):
        body = query_body(next(costs))
        start = time.perf_counter()
        response = client.post(
            "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        elapsed = time.perf_counter() - start
        if response.status_code != 201:
            failures += 1
        elif index >= 20:  # the first ones decrypt the cells and fill the caches
            latencies.append(elapsed)
            floor.between()
    if failures:
        print(f"  {failures} in-process queries failed", file=sys.stderr)
    return Phase(1, latencies, sum(latencies) or float("nan"), failures), floor.take()


# -- (a) the physical floor ---------------------------------------------------------------------


def timed(function: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


class Floor:
    """A charged release done with the bare primitives: Polars over the stored cells, OpenDP
    noise on the 48 aggregates (measurement built and invoked), and one durable SQLite
    commit (WAL, synchronous=FULL) of a small row."""

    def __init__(self, cells: pl.DataFrame, dataset: DatasetPolicy, work: Path) -> None:
        self.cells = cells
        self.domain = pl.DataFrame(
            list(itertools.product(*(dataset.dimension(name).values for name in GROUP_BY))),
            schema=GROUP_BY,
            orient="row",
        )
        self.scale = dataset.max_contacts_per_person / float(BASE_EPSILON)
        self.space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
        # Used from the 1-client phase's thread too, one thread at a time.
        self.connection = sqlite3.connect(
            work / "floor.sqlite3", isolation_level=None, check_same_thread=False
        )
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY, release TEXT, nano INT)"
        )
        self.counter = itertools.count()
        self.aggregates = self.aggregate()
        # Wall seconds of the releases run in turn with a phase (see ``between``).
        self.in_turn: list[float] = []

    def aggregate(self) -> list[int]:
        grouped = self.cells.group_by(GROUP_BY).agg(pl.col(CONTACTS_COLUMN).sum())
        full = self.domain.join(grouped, on=GROUP_BY, how="left").fill_null(0)
        return [int(v) for v in full[CONTACTS_COLUMN].to_list()]

    def noise(self) -> list[int]:
        measurement = self.space >> dp.m.then_laplace(scale=self.scale)
        released: list[int] = measurement(self.aggregates)
        return released

    def commit(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")
        self.connection.execute(
            "INSERT INTO charges (release, nano) VALUES (?, ?)",
            (f"rel_{next(self.counter):020d}", 1_000_000),
        )
        self.connection.execute("COMMIT")

    def release(self) -> None:
        self.aggregate()
        self.noise()
        self.commit()

    def steps(self, runs: int) -> dict[str, float]:
        """Median seconds of each step and of the whole release, over ``runs`` runs."""
        return {
            "polars over stored cells": statistics.median(timed(self.aggregate, runs)),
            "OpenDP build + noise": statistics.median(timed(self.noise, runs)),
            "durable SQLite commit": statistics.median(timed(self.commit, runs)),
            "total": statistics.median(timed(self.release, runs)),
        }

    def between(self) -> float:
        """One release, its wall time kept in ``in_turn``, run between two calls of a
        1-client phase so that both see the machine at the same moment; the CPU seconds it
        took, for the phase to leave out of its load generator's."""
        cpu = own_cpu_seconds()
        start = time.perf_counter()
        self.release()
        self.in_turn.append(time.perf_counter() - start)
        return own_cpu_seconds() - cpu

    def take(self) -> list[float]:
        """The in-turn times so far, and a fresh start."""
        taken, self.in_turn = self.in_turn, []
        return taken

    def close(self) -> None:
        self.connection.close()


# -- (b) OpenDP's Context API over the rows ------------------------------------------------------


def context_release(rows: pl.DataFrame, dataset: DatasetPolicy) -> Callable[[], None]:
    """One release of a 48-cell histogram with ``dp.Context`` over the rows."""
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

    return release


# -- report --------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


@dataclass
class Service:
    """What one deployment answered: one client, 8 clients, and (SQLite only) one
    client asking in turn the dataset with one batch and the one with the extra batches,
    and ``GET /healthz`` with 1 and 8 clients: the HTTP stack alone (gunicorn, Flask,
    flask-smorest, the rate limiter, metrics and logs) without token, database, cells,
    noise or signature."""

    label: str
    sequential: Phase | None
    concurrent: Phase
    after_batches: Phase | None = None
    stack: tuple[Phase, Phase] | None = None
    # One client asking the one-batch dataset in turn with the many-batch one.
    one_batch: Phase | None = None
    # Wall seconds of the floor's and the Context API's releases run in turn with the
    # 1-client phase.
    floor_in_turn: list[float] | None = None
    context_in_turn: list[float] | None = None


def report(
    args: argparse.Namespace,
    floor: dict[str, float],
    services: list[Service],
    cells: int,
    in_process: Phase,
    in_process_floor: list[float],
) -> dict[str, Any]:
    sqlite_run = services[0]
    if (
        sqlite_run.sequential is None
        or sqlite_run.after_batches is None
        or sqlite_run.one_batch is None
        or not sqlite_run.floor_in_turn
        or not sqlite_run.context_in_turn
    ):
        raise ValueError("the SQLite run measures one client on one batch and on many")
    context = sqlite_run.context_in_turn
    context_median = statistics.median(context)
    # Each ratio divides by the floor measured in turn with its own phase.
    floor_total = statistics.median(sqlite_run.floor_in_turn)
    in_process_floor_total = statistics.median(in_process_floor)
    print(
        f"\nquery benchmark: {args.contacts:,} synthetic contacts ({cells:,} stored cells), "
        f"count by month x channel (48 cells)"
    )
    for service in services:
        print(f"\n  {service.label} (distinct queries, each charged, noised, signed, stored)")
        phases = [
            ("1 client", service.sequential, "releases"),
            (f"{service.concurrent.clients} clients", service.concurrent, "releases"),
            ("1 client, 1 batch", service.one_batch, "releases"),
            (f"  in turn: {args.batches + 1} batches", service.after_batches, "releases"),
        ]
        if service.stack is not None:
            alone, loaded = service.stack
            phases.append(("/healthz, 1 client", alone, "requests"))
            phases.append((f"/healthz, {loaded.clients} clients", loaded, "requests"))
        for name, phase, unit in phases:
            if phase is None:
                continue
            print(
                f"    {name:22s} {len(phase.latencies):5d} {unit:8s}  p50 {ms(phase.p50)}  "
                f"p95 {ms(phase.p95)}  {phase.per_second:8.1f}/s"
                + (
                    f"  CPU each: service {ms(phase.cpu_each(phase.server_cpu)).strip()}, "
                    f"load generator {ms(phase.cpu_each(phase.client_cpu)).strip()}"
                    if not math.isnan(phase.server_cpu)
                    else ""
                )
                + (f"  ({phase.failures} failed)" if phase.failures else "")
            )
    print(f"\n  (a) floor of a charged release, in-process (median of {args.floor_runs})")
    for step, seconds in floor.items():
        print(f"    {step:28s} {ms(seconds)}")
    print(
        f"    total, in turn with the 1-client phase over HTTP: {ms(floor_total).strip()}; "
        f"with (c): {ms(in_process_floor_total).strip()}"
    )
    print(
        f"\n  (b) OpenDP Context API over the {args.contacts:,} rows, in turn with the 1-client "
        f"phase over HTTP (median of {len(context)}): {ms(context_median)}"
    )
    print(
        "\n  (c) the same release in-process, through Flask's test client (SQLite, after the "
        f"batches): p50 {ms(in_process.p50).strip()}, p95 {ms(in_process.p95).strip()}, "
        f"{in_process.p50 / in_process_floor_total:.2f}x the floor in turn with it"
        + (f" ({in_process.failures} failed)" if in_process.failures else "")
    )
    p50 = sqlite_run.sequential.p50
    floor_ratio = p50 / floor_total
    rate = sqlite_run.concurrent.per_second
    growth = sqlite_run.after_batches.p50 / sqlite_run.one_batch.p50
    context_ratio = context_median / p50
    print("\n  ratios and goals (SQLite, 1 client unless said)")
    print(
        f"    p50 / floor:                      {floor_ratio:8.2f}x  goal <= "
        f"{GOAL_FLOOR_RATIO:g}x: {verdict(floor_ratio <= GOAL_FLOOR_RATIO)}"
    )
    print(
        f"    releases/s, {sqlite_run.concurrent.clients} clients:             {rate:8.1f}   "
        f"goal >= {GOAL_RELEASES_PER_SECOND:g}/s: {verdict(rate >= GOAL_RELEASES_PER_SECOND)}"
    )
    concurrent = sqlite_run.concurrent
    cpu = concurrent.cpu_each(concurrent.server_cpu + concurrent.client_cpu)
    cores = os.cpu_count() or 1
    ceiling = cores / cpu
    print(
        f"      (at {cpu * 1000:.2f} ms of CPU per release, service and load generator, "
        f"{cores} cores allow at most {ceiling:.0f} releases/s)"
    )
    if sqlite_run.stack is not None:
        loaded = sqlite_run.stack[1]
        stack_cpu = loaded.cpu_each(loaded.server_cpu)
        release_cpu = concurrent.cpu_each(concurrent.server_cpu)
        print(
            f"      (the HTTP stack alone, GET /healthz with {loaded.clients} clients: "
            f"{stack_cpu * 1000:.2f} ms of the service's CPU per request, "
            f"{stack_cpu / release_cpu:.0%} of a release's {release_cpu * 1000:.2f} ms)"
        )
    print(
        f"    p50 {args.batches + 1} batches / 1 batch, in turn: {growth:6.2f}x  goal <= "
        f"{GOAL_BATCH_GROWTH:g}x: {verdict(growth <= GOAL_BATCH_GROWTH)}"
    )
    print(
        f"    Context API / p50:                {context_ratio:8.1f}x  goal >= "
        f"{GOAL_CONTEXT_RATIO:g}x: {verdict(context_ratio >= GOAL_CONTEXT_RATIO)}"
    )
    for service in services[1:]:
        print(
            f"    releases/s, {service.label}: {service.concurrent.per_second:.1f} "
            f"(p50 {ms(service.concurrent.p50).strip()})"
        )

    def figures(phase: Phase | None) -> dict[str, Any] | None:
        if phase is None:
            return None
        return {
            "clients": phase.clients,
            "releases": len(phase.latencies),
            "failed": phase.failures,
            "p50_s": phase.p50,
            "p95_s": phase.p95,
            "releases_per_s": phase.per_second,
            "service_cpu_per_release_s": phase.cpu_each(phase.server_cpu),
            "load_generator_cpu_per_release_s": phase.cpu_each(phase.client_cpu),
        }

    return {
        "contacts": args.contacts,
        "stored_cells": cells,
        "services": [
            {
                "label": service.label,
                "sequential": figures(service.sequential),
                "concurrent": figures(service.concurrent),
                "one_batch_in_turn": figures(service.one_batch),
                "after_batches_in_turn": figures(service.after_batches),
                "healthz": [figures(phase) for phase in service.stack]
                if service.stack is not None
                else None,
            }
            for service in services
        ],
        "floor_s": floor,
        "floor_in_turn_s": {"http": floor_total, "in_process": in_process_floor_total},
        "in_process": figures(in_process),
        "context_s": context,
        "ratios": {
            "p50_over_floor": floor_ratio,
            "releases_per_s": rate,
            "cpu_bound_releases_per_s": ceiling,
            "p50_batches_over_p50": growth,
            "context_over_p50": context_ratio,
        },
    }


def prepare(
    env: dict[str, str], contacts: int, datasets: tuple[str, ...] = (DATASET,)
) -> tuple[str, str]:
    """Keyring, schema and the same synthetic contacts in each of ``datasets`` of one
    deployment; a partner token and an owner token of the last dataset."""
    dpx(env, "init")
    for dataset in datasets:
        dpx(
            env, "demo-data", "--dataset", dataset, "--contacts", str(contacts), "--seed", str(SEED)
        )
    partner = dpx(env, "issue-token", "--partner", PARTNER).splitlines()[0]
    owner = dpx(env, "issue-token", "--owner", datasets[-1]).splitlines()[0]
    return partner, owner


def measure_sqlite(
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    dataset: DatasetPolicy,
    tokens: tuple[str, str],
    floor: Floor,
    context: Callable[[], None],
) -> Service:
    """One gunicorn instance over the prepared SQLite deployment. The floor's release runs
    after each query of the 1-client phase, and the Context API's ``--context-runs``
    releases are spread over it, so that the ratios compare under the same machine load."""
    partner, owner = tokens
    server = start_server(env, args.workers, work / "gunicorn.log", args.threads)
    costs = distinct_costs()
    try:
        print("measuring the service on SQLite over HTTP ...", flush=True)
        # Warm-up, as a service that has been running is warm: every worker decrypts the
        # cells once and builds its caches, and every thread of every worker runs the
        # release path a few times (the interpreter specialises code that runs often).
        warm_up = 10 * args.clients * args.workers
        run_phase([server], partner, costs, queries=warm_up, clients=args.clients)
        sequential_queries = max(20, args.queries // 5)
        every = max(1, sequential_queries // args.context_runs)
        turns = itertools.count()
        context_times: list[float] = []

        def between() -> float:
            used = floor.between()
            if next(turns) % every == every // 2 and len(context_times) < args.context_runs:
                cpu = own_cpu_seconds()
                context_times.extend(timed(context, 1))
                used += own_cpu_seconds() - cpu
            return used

        sequential = run_phase(
            [server],
            partner,
            costs,
            queries=sequential_queries,
            clients=1,
            between=between,
        )
        floor_in_turn = floor.take()
        concurrent = run_phase([server], partner, costs, queries=args.queries, clients=args.clients)
        probe = Call("GET", "/healthz", None, 200)
        stack = (
            run_load([server], [probe] * max(20, args.queries // 5), clients=1),
            run_load([server], [probe] * args.queries, clients=args.clients),
        )
        print(f"uploading {args.batches} more small batches to {BATCHED} ...", flush=True)
        upload_small_batches(server.url, owner, dataset, args.batches)
        both = (DATASET, BATCHED)
        run_phase([server], partner, costs, queries=warm_up, clients=args.clients, datasets=both)
        # One client asks the two datasets in turn: the machine's speed, which drifts
        # between phases, is the same for both.
        in_turn = run_phase(
            [server],
            partner,
            costs,
            queries=2 * max(20, args.queries // 5),
            clients=1,
            datasets=both,
        )
    finally:
        server.stop()
    threads = args.threads or int(os.environ.get("DPX_THREADS", "4"))
    label = f"SQLite, gunicorn 1 instance, {args.workers} workers x {threads} threads"
    return Service(
        label,
        sequential,
        concurrent,
        in_turn.part(BATCHED),
        stack,
        in_turn.part(DATASET),
        floor_in_turn,
        context_times,
    )


def measure_postgres(
    args: argparse.Namespace, base_env: dict[str, str], work: Path, url: str
) -> Service:
    """Two gunicorn instances over one fresh schema of the PostgreSQL server at ``url``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"dpx_bench_{os.getpid()}_{int(time.time())}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        data_dir = work / "var-postgres"
        env = dict(
            base_env,
            DPX_DATA_DIR=str(data_dir),
            DPX_DATABASE_URL=scoped.render_as_string(hide_password=False),
        )
        partner, _owner = prepare(env, args.contacts)
        # Each instance has its own data directory (pidfile, metric files), as on its own
        # machine; the database and the keyring are shared.
        keyring = Settings.from_env(env).keyring_path
        servers = [
            start_server(
                env
                if index == 0
                else dict(
                    env, DPX_DATA_DIR=str(work / f"var-pg-{index}"), DPX_KEYRING=str(keyring)
                ),
                args.pg_workers,
                work / f"gunicorn-pg-{index}.log",
                args.threads,
            )
            for index in range(2)
        ]
        costs = distinct_costs()
        try:
            print("measuring the service on PostgreSQL over HTTP ...", flush=True)
            warm_up = 10 * args.clients * len(servers) * args.pg_workers
            run_phase(servers, partner, costs, queries=warm_up, clients=args.clients)
            concurrent = run_phase(
                servers, partner, costs, queries=args.queries, clients=args.clients
            )
        finally:
            for server in servers:
                server.stop()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    label = f"PostgreSQL, gunicorn 2 instances x {args.pg_workers} worker(s)"
    return Service(label, None, concurrent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Charged releases over HTTP next to the in-process floor and the Context API."
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
    parser.add_argument(
        "--batches", type=int, default=300, help="small batches uploaded before the last phase"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("DPX_TEST_DATABASE_URL", ""),
        help="PostgreSQL server URL for the two-instance run (default: DPX_TEST_DATABASE_URL; "
        "skipped when empty); a schema is created in it and dropped afterwards",
    )
    parser.add_argument(
        "--pg-workers", type=int, default=1, help="workers per instance on PostgreSQL"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per gunicorn worker (default: the service's, DPX_THREADS or 4)",
    )
    parser.add_argument("--floor-runs", type=int, default=200)
    parser.add_argument("--context-runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    counts = (
        args.contacts,
        args.queries,
        args.clients,
        args.workers,
        args.batches,
        args.pg_workers,
        args.floor_runs,
        args.context_runs,
    )
    if min(counts) < 1 or (args.threads is not None and args.threads < 1):
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
        tokens = prepare(env, args.contacts, (DATASET, BATCHED))
        components = Components.open(Settings.from_env(env))
        dataset = components.exchange.dataset(DATASET)
        cells = components.store.cells(dataset)
        components.database.dispose()

        print("measuring the floor ...", flush=True)
        floor = Floor(cells, dataset, work)
        steps = floor.steps(args.floor_runs)
        context = context_release(
            generate_contacts(dataset, contacts=args.contacts, seed=SEED), dataset
        )

        services = [measure_sqlite(args, env, work, dataset, tokens, floor, context)]
        print("measuring the same release in-process ...", flush=True)
        in_process, in_process_floor = measure_in_process(
            env, tokens[0], max(100, args.queries // 2), floor
        )
        floor.close()
        if args.postgres:
            services.append(measure_postgres(args, env, work, args.postgres))
        else:
            print("no --postgres URL: the PostgreSQL run is skipped", file=sys.stderr)

        figures = report(args, steps, services, cells.height, in_process, in_process_floor)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
