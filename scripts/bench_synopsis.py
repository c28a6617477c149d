"""Benchmark: a synopsis against direct releases at the same budget, in one run.

On a synthetic helpline-scale dataset (12 months x 4 channels x 6 referral sources x 3
caller types, about 3,500 contacts; zCDP, at most 4 contacts per person) whose policy
declares the marginals [month, channel], [month, referral_source] and [channel,
referral_source] for rho 0.5, and a partner workload of a dozen questions (monthly series,
monthly by channel and by referral source, channel x referral source, quarterly totals by
channel, yearly by referral source, half-year totals, chat contacts by month), prints:

* RMSE over the workload's answers: the synopsis against the same rho split evenly over the
  12 questions as direct releases (OpenDP noise both), over repeated builds, with the 95%
  intervals' coverage (pooled, and of the worst-covered question); again on a sparse
  table of 150 contacts, where the non-negative fit is biased upwards;
* build time of `Synopses.build` (charge, read and decrypt the cells, measure, fit, seal,
  store), first and median;
* answer latency through the HTTP stack (the Flask app, in-process): fresh answers from the
  synopsis (each a distinct question: computed, signed, stored durably) and their repeats,
  against repeats of a cached direct release; p50 of each.

Goals: RMSE <= 0.5x direct (at most 0.7x); build <= 2 s; answer p50 <= 1.5x a cached release.
Everything lives in a temporary directory that is removed afterwards.

Run: scripts/bench synopsis [--builds N] [--answers N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.crypto.keyring import Keyring  # noqa: E402
from service.database.engine import Database  # noqa: E402
from service.database.migrate import upgrade  # noqa: E402
from service.dp.engine import plan_query  # noqa: E402
from service.dp.mechanisms import noisy  # noqa: E402
from service.dp.synopsis import answer, design, estimate, measure  # noqa: E402
from service.store.ingest import parse_batch  # noqa: E402
from tests.dp.synopsis_workload import (  # noqa: E402
    HELPLINE,
    MONTHS,
    POLICY_YAML,
    SYNOPSIS_RHO,
    WORKLOAD,
    cells_csv,
    true_answers,
    true_table,
    workload_queries,
)

PARTNER_YAML = """id: bench
name: Synopsis benchmark partner
jurisdiction: GB
grants:
  - dataset: helpline-bench
    budget: {rho: 1000}
    statistics: [count]
    dimensions: [month, channel, referral_source, caller_type]
"""
GOAL_RMSE, MUST_RMSE, GOAL_BUILD, GOAL_ANSWER = 0.5, 0.7, 2.0, 1.5


def _marginal_counts(table: np.ndarray) -> list[list[int]]:
    result = []
    for axes in ((0, 1), (0, 2), (1, 2)):
        summed = tuple(a for a in range(4) if a not in axes)
        result.append([int(v) for v in table.sum(axis=summed).reshape(-1)])
    return result


def accuracy(builds: int, contacts: int) -> tuple[float, float, float, float]:
    """(synopsis RMSE, direct RMSE, interval coverage, the worst question's coverage) over
    ``builds`` repetitions on a table of ``contacts``."""
    table = true_table(contacts=contacts)
    truths = [true_answers(table, q) for q in workload_queries(None)]
    counts = _marginal_counts(table)
    priced = design(HELPLINE)
    direct = [plan_query(q, HELPLINE) for q in workload_queries(SYNOPSIS_RHO / len(WORKLOAD))]
    synopsis_errors: list[float] = []
    direct_errors: list[float] = []
    covered = [0] * len(WORKLOAD)
    asked = [0] * len(WORKLOAD)
    for _ in range(builds):
        fitted = estimate(priced, measure(priced, counts))
        for index, (query, truth) in enumerate(zip(workload_queries(None), truths, strict=True)):
            for value, exact in zip(answer(fitted, query, HELPLINE), truth, strict=True):
                synopsis_errors.append(value.value - float(exact))
                covered[index] += value.ci[0] <= exact <= value.ci[1]
                asked[index] += 1
        for plan, truth in zip(direct, truths, strict=True):
            released = noisy(plan.primary, [int(v) for v in truth])
            direct_errors.extend(r - float(t) for r, t in zip(released, truth, strict=True))
    rmse = math.sqrt(float(np.mean(np.square(synopsis_errors))))
    direct_rmse = math.sqrt(float(np.mean(np.square(direct_errors))))
    worst = min(c / n for c, n in zip(covered, asked, strict=True))
    return rmse, direct_rmse, sum(covered) / sum(asked), worst


def service_figures(
    root: Path, builds: int, answers: int
) -> tuple[list[float], float, float, float]:
    """Build times (s), and p50 (s) of fresh synopsis answers, of repeated (cached) synopsis
    answers, and of cached direct releases."""
    policies = root / "policies"
    (policies / "datasets").mkdir(parents=True)
    (policies / "partners").mkdir()
    (policies / "datasets" / "helpline-bench.yaml").write_text(POLICY_YAML)
    (policies / "partners" / "bench.yaml").write_text(PARTNER_YAML)
    data = root / "var"
    data.mkdir()
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'dpx.sqlite3'}",
        keyring_path=data / "keyring.json",
        policy_dir=policies,
        # The bench measures answers, not the per-token rate limit.
        rate_limit_queries="1000000 per minute",
    )
    Keyring.create(settings.keyring_path)
    database = Database(settings.database_url)
    upgrade(database)
    database.dispose()
    app = create_app(settings)
    exchange = app.extensions["dpx.exchange"]
    dataset = exchange.dataset(HELPLINE.id)
    batch = parse_batch(
        cells_csv(true_table()).encode(), content_type="text/csv", form="cells", dataset=dataset
    )
    exchange.store.add(dataset, batch, form="cells", actor="bench")
    times = []
    for _ in range(builds):
        began = time.perf_counter()
        exchange.synopses.build(HELPLINE.id, actor="admin:bench")
        times.append(time.perf_counter() - began)
    token = app.extensions["dpx.tokens"].issue("partner", "bench").token
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    # Distinct questions: totals by channel over a set of months, each answered afresh
    # from the synopsis ([month, channel]), signed and stored.
    months = [m for size in (2, 3, 4) for m in itertools.combinations(MONTHS, size)][:answers]
    fresh = []
    for chosen in months:
        body = {
            "dataset": HELPLINE.id,
            "statistic": "count",
            "group_by": ["channel"],
            "filters": {"month": list(chosen)},
            "source": "synopsis",
        }
        began = time.perf_counter()
        response = client.post("/v1/queries", json=body, headers=headers)
        fresh.append(time.perf_counter() - began)
        if response.status_code != 201:
            raise SystemExit(f"synopsis answer failed: {response.json}")
    repeated = []
    for chosen in months:
        body = {
            "dataset": HELPLINE.id,
            "statistic": "count",
            "group_by": ["channel"],
            "filters": {"month": list(chosen)},
            "source": "synopsis",
        }
        began = time.perf_counter()
        response = client.post("/v1/queries", json=body, headers=headers)
        repeated.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise SystemExit(f"repeated synopsis answer was not cached: {response.json}")
    direct = {
        "dataset": HELPLINE.id,
        "statistic": "count",
        "group_by": ["month", "channel"],
        "rho": 0.01,
    }
    first = client.post("/v1/queries", json=direct, headers=headers)
    if first.status_code != 201:
        raise SystemExit(f"direct release failed: {first.json}")
    cached = []
    for _ in range(answers):
        began = time.perf_counter()
        response = client.post("/v1/queries", json=direct, headers=headers)
        cached.append(time.perf_counter() - began)
        if response.status_code != 200 or not response.json["cached"]:
            raise SystemExit(f"repeat was not cached: {response.json}")
    app.extensions["dpx.database"].dispose()
    return times, statistics.median(fresh), statistics.median(repeated), statistics.median(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=200, help="builds for RMSE and coverage")
    parser.add_argument("--answers", type=int, default=200, help="answers timed of each kind")
    args = parser.parse_args()
    rmse, direct_rmse, coverage, worst = accuracy(args.builds, 3500)
    sparse = accuracy(args.builds, 150)
    root = Path(tempfile.mkdtemp(prefix="dpx-bench-synopsis-"))
    try:
        times, fresh_p50, repeated_p50, cached_p50 = service_figures(root, 5, args.answers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = rmse / direct_rmse
    build = statistics.median(times)
    answer_ratio = fresh_p50 / cached_p50

    def verdict(met: bool) -> str:
        return "met" if met else "missed"

    print(f"workload: {len(WORKLOAD)} questions, rho {SYNOPSIS_RHO} ({args.builds} builds)")
    print(
        f"RMSE synopsis {rmse:.2f} vs direct {direct_rmse:.2f}: {ratio:.2f}x "
        f"(goal <= {GOAL_RMSE}x: {verdict(ratio <= GOAL_RMSE)}; "
        f"must <= {MUST_RMSE}x: {verdict(ratio <= MUST_RMSE)}); "
        f"95% interval coverage {coverage:.3f} (worst question {worst:.3f})"
    )
    print(
        f"sparse table (150 contacts): RMSE synopsis {sparse[0]:.2f} vs direct "
        f"{sparse[1]:.2f}: {sparse[0] / sparse[1]:.2f}x; 95% interval coverage "
        f"{sparse[2]:.3f} (worst question {sparse[3]:.3f})"
    )
    print(
        f"build: first {times[0]:.2f} s, median {build:.2f} s "
        f"(goal <= {GOAL_BUILD} s: {verdict(build <= GOAL_BUILD)})"
    )
    print(
        f"answer p50: synopsis {fresh_p50 * 1000:.1f} ms vs cached release "
        f"{cached_p50 * 1000:.1f} ms: {answer_ratio:.2f}x "
        f"(goal <= {GOAL_ANSWER}x: {verdict(answer_ratio <= GOAL_ANSWER)}); a fresh answer "
        f"commits its release durably, a cached one only reads; repeated synopsis answer "
        f"p50 {repeated_p50 * 1000:.1f} ms ({repeated_p50 / cached_p50:.2f}x)"
    )


if __name__ == "__main__":
    main()
