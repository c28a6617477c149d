"""Synopsis builds as real `dpx` processes: one exact charge each, no over-spend, no half-build.

Several `dpx synopsis build` processes race for a global budget that fits exactly two
builds; a build is SIGKILLed after its charge. On SQLite and PostgreSQL, the ledger, the
synopses table and the audit chain must agree with what each process reported.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, Table, func, select

from service.components import Components
from service.config import Settings
from service.database.schema import audit_log, charges, synopses
from service.ledger.budgets import GLOBAL
from service.store.demo import generate_contacts
from service.store.ingest import parse_batch
from service.synopses import SYNOPSIS_ACCOUNT
from tests.conftest import BOTH_BACKENDS
from tests.live_server import environment, settings_variables

pytestmark = [pytest.mark.slow, BOTH_BACKENDS]

DATASET = "nl-helpline-2024"
DPX = str(Path(sys.executable).parent / "dpx")


def _global_budget(settings: Settings, rho: str) -> None:
    path = settings.policy_dir / "datasets" / f"{DATASET}.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("global_budget: {rho: 2.0}", f"global_budget: {{rho: {rho}}}"))


def _upload(components: Components, batches: int) -> None:
    dataset = components.exchange.dataset(DATASET)
    for seed in range(batches):
        body = generate_contacts(dataset, contacts=3500, seed=seed).write_csv().encode()
        aggregated = parse_batch(body, content_type="text/csv", form="contacts", dataset=dataset)
        components.store.add(dataset, aggregated, form="contacts", actor="test")


def _count(components: Components, table: Table, *conditions: ColumnElement[bool]) -> int:
    with components.database.read() as conn:
        query = select(func.count()).select_from(table).where(*conditions)
        return int(conn.execute(query).scalar_one())


def _audit(components: Components, action: str) -> int:
    return _count(components, audit_log, audit_log.c.action == action)


def test_concurrent_builds_never_overspend_and_each_charges_exactly_once(
    settings: Settings,
) -> None:
    _global_budget(settings, "1.0")  # two builds of rho 0.5 fit, a third does not
    components = Components.open(settings)
    _upload(components, 1)
    env = environment(settings_variables(settings))

    def build(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DPX, "synopsis", "build", DATASET], env=env, capture_output=True, text=True
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(build, range(6)))
    built = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(built) == 2, [r.stderr for r in results]
    for result in refused:
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "Error: synopsis build refused: the synopsis of nl-helpline-2024 costs rho 0.5 but "
                "the global budget has rho"
            )
        ), result.stderr
        assert result.stderr.strip().endswith("nothing was charged")
    assert components.ledger.spent(DATASET, GLOBAL) == Fraction(1)
    assert components.ledger.spent(DATASET, SYNOPSIS_ACCOUNT) == Fraction(1)
    lines = components.ledger.history(DATASET, SYNOPSIS_ACCOUNT)
    assert [line.amount for line in lines] == [Fraction(1, 2), Fraction(1, 2)]
    assert _count(components, synopses) == 2
    assert _audit(components, "synopsis.charge") == 2
    assert _audit(components, "synopsis.build") == 2
    assert components.audit.verify().ok
    components.database.dispose()


def test_a_build_killed_after_its_charge_leaves_no_synopsis(settings: Settings) -> None:
    _global_budget(settings, "50.0")
    components = Components.open(settings)
    # Many batches make reading the cells, between charge and store, take a while.
    _upload(components, 40)
    env = environment(settings_variables(settings))
    chance = random.Random("synopsis-kill")
    landed = 0
    for _attempt in range(8):
        with subprocess.Popen(
            [DPX, "synopsis", "build", DATASET],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stderr is not None
            first = process.stderr.readline()
            assert first.startswith("[1/4] charged rho 0.5"), first
            time.sleep(chance.uniform(0.0, 0.02))
            process.send_signal(signal.SIGKILL)
            process.wait()
        charged = _audit(components, "synopsis.charge")
        stored = _count(components, synopses)
        # Every charge is whole and on the ledger; every stored synopsis has its audit entry.
        assert components.ledger.spent(DATASET, GLOBAL) == Fraction(charged, 2)
        assert _count(components, charges, charges.c.partner == SYNOPSIS_ACCOUNT) == charged
        assert stored == _audit(components, "synopsis.build")
        landed = charged - stored
        if landed >= 3:
            break
    assert landed >= 3, "no kill landed between a charge and its synopsis"
    assert components.synopses.store.newest(DATASET) is None or stored > 0
    # The next build is whole, and answers come from it alone.
    after = components.synopses.build(DATASET, actor="admin:test")
    assert components.synopses.store.newest(DATASET) == after.stored
    assert components.audit.verify().ok
    components.database.dispose()
