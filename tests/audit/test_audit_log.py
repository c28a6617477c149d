"""The audit chain detects every edit made behind its back, and never forks under load.

Tampering is done the way an intruder with database access would: plain SQL on the
``audit_log`` and ``audit_head`` tables, or an edit of the checkpoint file. Both
``AuditLog.verify()`` and ``dpx verify-audit`` must fail and name the first bad entry.
The settings fixture writes a signed checkpoint every 10 entries.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import Connection, delete, insert, select, update

from service.audit.log import AuditLog
from service.cli import main
from service.components import Components
from service.config import Settings
from service.database.schema import audit_head, audit_log
from tests.conftest import BOTH_BACKENDS, Tokens

ENTRIES = 25  # checkpoints at 10 and 20


def dpx(settings: Settings, *args: str) -> Result:
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_AUDIT_CHECKPOINT_EVERY": str(settings.audit_checkpoint_every),
    }
    return CliRunner().invoke(main, list(args), env=env)


def fill(audit: AuditLog, count: int = ENTRIES) -> None:
    for n in range(count):
        with audit.database.write() as conn:
            audit.append(
                conn,
                actor="admin:test",
                action="test.event",
                dataset="uk-helpline-2024",
                details={"n": n},
            )


def row(conn: Connection, seq: int) -> dict[str, object]:
    found = conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()
    return dict(found._mapping)


def edit(conn: Connection) -> int:
    conn.execute(update(audit_log).where(audit_log.c.seq == 7).values(details='{"n":70}'))
    return 7


def edit_actor(conn: Connection) -> int:
    conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(actor="dpo:-:tok_x"))
    return 1


def delete_middle(conn: Connection) -> int:
    conn.execute(delete(audit_log).where(audit_log.c.seq == 12))
    return 12


def delete_last(conn: Connection) -> int:
    conn.execute(delete(audit_log).where(audit_log.c.seq == ENTRIES))
    return ENTRIES


def swap(conn: Connection) -> int:
    first, second = row(conn, 5), row(conn, 6)
    for seq, content in ((5, second), (6, first)):
        values = {k: v for k, v in content.items() if k != "seq"}
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**values))
    return 5


def insert_middle(conn: Connection) -> int:
    # Make room at 9 by moving 9..25 up by one (from the top, to keep seq unique).
    for seq in range(ENTRIES, 8, -1):
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq + 1))
    forged = dict(row(conn, 8), seq=9, details='{"n":99}')
    conn.execute(insert(audit_log).values(**forged))
    conn.execute(update(audit_head).values(seq=ENTRIES + 1))
    return 9


def append_forged(conn: Connection) -> int:
    last = row(conn, ENTRIES)
    conn.execute(insert(audit_log).values(**dict(last, seq=ENTRIES + 1, prev_mac=last["mac"])))
    conn.execute(update(audit_head).values(seq=ENTRIES + 1, mac=last["mac"]))
    return ENTRIES + 1


def truncate_tail_and_head(conn: Connection) -> int:
    # Cut entries 16..25 and move the head back to 15: the chain itself is consistent,
    # only the checkpoint signed at 20 shows what is missing.
    conn.execute(delete(audit_log).where(audit_log.c.seq > 15))
    conn.execute(update(audit_head).values(seq=15, mac=row(conn, 15)["mac"]))
    return 16


def delete_head(conn: Connection) -> int:
    conn.execute(delete(audit_head))
    return ENTRIES + 1


TAMPERING: list[Callable[[Connection], int]] = [
    edit,
    edit_actor,
    delete_middle,
    delete_last,
    swap,
    insert_middle,
    append_forged,
    truncate_tail_and_head,
    delete_head,
]


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__)
def test_tampering_is_detected_at_the_first_bad_entry(
    components: Components, settings: Settings, tamper: Callable[[Connection], int]
) -> None:
    fill(components.audit)
    assert components.audit.verify().ok
    with components.database.write() as conn:
        first_bad = tamper(conn)

    result = components.audit.verify()

    assert not result.ok
    assert result.first_bad == first_bad, result.reason
    cli = dpx(settings, "verify-audit")
    assert cli.exit_code == 1
    assert f"audit log is NOT intact: {result.reason} (first bad entry: {first_bad})" in cli.stderr


@BOTH_BACKENDS
def test_an_untouched_chain_verifies(components: Components, settings: Settings) -> None:
    fill(components.audit)
    assert components.audit.verify().ok and components.audit.verify().entries == ENTRIES
    cli = dpx(settings, "verify-audit")
    assert cli.exit_code == 0 and f"audit log intact: {ENTRIES} entries" in cli.stdout


def test_truncation_is_caught_only_through_the_checkpoint_file(components: Components) -> None:
    fill(components.audit)
    checkpoints = [
        json.loads(line)
        for line in components.settings.audit_checkpoint_path.read_text().splitlines()
    ]
    assert [c["seq"] for c in checkpoints] == [10, 20]
    with components.database.write() as conn:
        truncate_tail_and_head(conn)
    assert "entries 16..20 were cut off" in components.audit.verify().reason


@pytest.mark.parametrize(
    "forge",
    [
        lambda line: dict(line, mac="f" * 64),
        lambda line: dict(line, seq=line["seq"] + 100),
        lambda line: dict(line, signature="AAAA" + line["signature"][4:]),
        lambda line: dict(line, key_id="sig-00000000"),
        lambda line: {k: v for k, v in line.items() if k != "signature"},
        lambda line: "not json {",
        lambda line: [line],
    ],
    ids=["mac", "seq", "signature", "key_id", "unsigned", "garbage", "not-an-object"],
)
def test_a_forged_checkpoint_line_is_caught(
    components: Components, settings: Settings, forge: Callable[[dict[str, object]], object]
) -> None:
    fill(components.audit)
    path = settings.audit_checkpoint_path
    genuine = json.loads(path.read_text().splitlines()[0])
    forged = forge(genuine)
    with path.open("a") as handle:
        handle.write((forged if isinstance(forged, str) else json.dumps(forged)) + "\n")

    result = components.audit.verify()

    assert not result.ok and "checkpoint line 3" in result.reason
    assert dpx(settings, "verify-audit").exit_code == 1


def test_checkpoints_signed_by_a_retired_signing_key_still_verify(
    components: Components, settings: Settings
) -> None:
    fill(components.audit, 10)
    assert dpx(settings, "rotate-signing-key").exit_code == 0
    fill(components.audit, 10)
    assert dpx(settings, "verify-audit").exit_code == 0


def test_export_writes_json_lines_since_a_date(components: Components, settings: Settings) -> None:
    fill(components.audit, 3)
    today = datetime.now(UTC).date()

    everything = dpx(settings, "audit", "export")
    recent = dpx(settings, "audit", "export", "--since", today.isoformat())
    future = dpx(settings, "audit", "export", "--since", (today + timedelta(days=2)).isoformat())

    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[1]["prev_mac"] == lines[0]["mac"]
    assert set(lines[0]) == {
        "seq",
        "at",
        "actor",
        "action",
        "dataset",
        "details",
        "prev_mac",
        "mac",
    }
    assert recent.stdout == everything.stdout
    assert future.exit_code == 0 and future.stdout == ""
    bad = dpx(settings, "audit", "export", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.output


def test_a_verification_racing_appends_sees_an_intact_chain(components: Components) -> None:
    fill(components.audit, 5)
    stop = threading.Event()

    def keep_appending() -> None:
        while not stop.is_set():
            fill(components.audit, 1)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        results = [components.audit.verify() for _ in range(15)]
    finally:
        stop.set()
        writer.join()
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]


CHARGES = 64


@BOTH_BACKENDS
def test_concurrent_charges_make_one_contiguous_verified_chain(app: Flask, tokens: Tokens) -> None:
    audit: AuditLog = app.extensions["dpx.audit"]
    start = audit.verify().entries
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def query(worker: int) -> None:
        client = app.test_client()
        barrier.wait()
        for n in range(worker, CHARGES, 16):
            body = {
                "dataset": "uk-helpline-2024",
                "statistic": "count",
                "group_by": ["channel"],
                "epsilon": round(0.001 + n / 2000, 4),
            }
            statuses.append(
                client.post("/v1/queries", json=body, headers=tokens.partner).status_code
            )

    threads = [threading.Thread(target=query, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [201] * CHARGES
    entries = list(audit.entries(after=start))
    assert [e.seq for e in entries] == list(range(start + 1, start + len(entries) + 1))
    assert sum(e.action == "release.create" for e in entries) == CHARGES
    assert audit.verify().ok
