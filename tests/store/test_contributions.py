"""A person's bounds across batches: what each person contributed is remembered (sealed, by
keyed pseudonym) and every new batch is truncated against what is left.

Uploads go through the real ingest (``parse_batch``) and the real store, on SQLite and
PostgreSQL; the concurrency test runs two separate processes against one database.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

from service.components import Components
from service.config import Settings
from service.crypto.envelope import open_sealed
from service.database.schema import batches, dataset_documents, metadata
from service.policy.model import DatasetPolicy
from service.store.batches import StoredBatch
from service.store.cells import decode_cells, merge_cells
from service.store.documents import CONTRIBUTIONS, PSEUDONYM_KEY, sealed_label
from service.store.errors import InvalidBatch
from service.store.ingest import parse_batch
from service.store.rotation import KeyRotation
from tests.conftest import BOTH_BACKENDS
from tests.live_server import ROOT, environment, settings_variables

pytestmark = BOTH_BACKENDS

DATASET = "uk-helpline-2024"
HEADER = "month,country,channel,caller_type,referral_source,minutes,person"
PERSON_BOUND = 3
CELL_BOUND = 2


@pytest.fixture
def policy_dir(policy_dir: Path) -> Path:
    """The demo policies with the UK dataset bounded to 3 contacts a person, 2 a cell."""
    path = policy_dir / "datasets" / f"{DATASET}.yaml"
    path.write_text(
        path.read_text().replace(
            "max_contacts_per_person: 10",
            f"max_contacts_per_person: {PERSON_BOUND}\n  max_contacts_per_cell: {CELL_BOUND}",
        )
    )
    return policy_dir


def contact(person: str, month: str = "2024-01", channel: str = "chat", minutes: int = 10) -> str:
    return f"{month},GB,{channel},self_concerned,police_warning,{minutes},{person}"


def upload(components: Components, *rows: str) -> StoredBatch:
    dataset = components.exchange.policies.datasets[DATASET]
    body = ("\n".join([HEADER, *rows]) + "\n").encode()
    aggregated = parse_batch(body, content_type="text/csv", form="contacts", dataset=dataset)
    return components.store.add(dataset, aggregated, form="contacts", actor="test")


def contacts_by_cell(components: Components) -> dict[tuple[str, str], int]:
    """(month, channel) -> contacts, from the cells a query reads."""
    dataset = components.exchange.policies.datasets[DATASET]
    cells = components.store.cells(dataset)
    return {(row["month"], row["channel"]): row["contacts"] for row in cells.iter_rows(named=True)}


def test_a_person_spread_over_twelve_batches_contributes_at_most_the_bound(
    components: Components,
) -> None:
    # Each month the same caller contacts twice, in that month's cell; a second caller once.
    answers = [
        upload(
            components, contact("caller", month), contact("caller", month), contact("other", month)
        )
        for month in (f"2024-{m:02d}" for m in range(1, 13))
    ]
    # First contacts kept across batches: the caller's first three (two in January, one in
    # February), the other caller's first three (January to March).
    assert [a.truncated for a in answers] == [0, 1, 2] + [3] * 9
    assert [a.contacts for a in answers] == [3, 2, 1] + [0] * 9
    assert contacts_by_cell(components) == {
        ("2024-01", "chat"): 3,
        ("2024-02", "chat"): 2,
        ("2024-03", "chat"): 1,
    }


def test_the_per_cell_bound_holds_across_batches_and_leaves_the_rest_of_the_allowance(
    components: Components,
) -> None:
    first = upload(components, contact("p"))
    second = upload(components, contact("p"), contact("p"))
    third = upload(
        components, contact("p"), contact("p", channel="phone"), contact("p", channel="web")
    )
    # The cell (January, chat) takes two of p's contacts; a third there is dropped without
    # using up p's overall allowance, which the phone contact then takes.
    assert [first.truncated, second.truncated, third.truncated] == [0, 1, 2]
    assert contacts_by_cell(components) == {("2024-01", "phone"): 1, ("2024-01", "chat"): 2}


def test_without_a_per_cell_bound_each_instance_reads_the_persons_totals(
    settings: Settings,
) -> None:
    path = settings.policy_dir / "datasets" / f"{DATASET}.yaml"
    path.write_text(path.read_text().replace(f"\n  max_contacts_per_cell: {CELL_BOUND}", ""))
    first, second = Components.open(settings), Components.open(settings)
    try:
        assert first.exchange.policies.datasets[DATASET].max_contacts_per_cell is None
        upload(first, contact("p"), contact("p"))
        # Another instance decrypts the contributions the first one stored.
        later = upload(second, contact("p", "2024-02"), contact("p", "2024-03"))
        assert (later.contacts, later.truncated) == (1, 1)
        assert upload(first, contact("p", "2024-04")).truncated == 1
    finally:
        first.database.dispose()
        second.database.dispose()


def test_blanks_around_a_pseudonym_do_not_make_another_person_in_a_later_batch(
    components: Components,
) -> None:
    upload(components, contact("p1"), contact("p1", "2024-02"), contact("p1", "2024-03"))
    later = upload(components, contact(" p1 ", "2024-04"))
    assert (later.contacts, later.truncated) == (0, 1)


def test_uploads_without_a_person_column_are_not_truncated_and_leave_the_state_alone(
    components: Components,
) -> None:
    dataset = components.exchange.policies.datasets[DATASET]
    body = (
        "month,country,channel,caller_type,referral_source,minutes\n"
        + "2024-01,GB,chat,self_concerned,police_warning,5\n" * 5
    ).encode()
    aggregated = parse_batch(body, content_type="text/csv", form="contacts", dataset=dataset)
    stored = components.store.add(dataset, aggregated, form="contacts", actor="test")
    assert (stored.contacts, stored.truncated) == (5, 0)
    with components.database.read() as conn:
        kinds = set(conn.execute(select(dataset_documents.c.kind)).scalars())
    assert kinds == {"cells"}


def test_a_rotation_between_uploads_keeps_each_persons_count(components: Components) -> None:
    upload(components, contact("p"), contact("p", "2024-02"))
    rotation = KeyRotation(components.database, components.keyring, components.audit)
    old = components.keyring.primary_kek_id
    rotation.run(rotation.start())
    rotation.run(rotation.start(reencrypt=True))
    rotation.retire(old)
    # The pseudonym key was rewrapped and sealed again, never replaced: "p" is still "p".
    later = upload(components, contact("p", "2024-03"), contact("p", "2024-04"))
    assert (later.contacts, later.truncated) == (1, 1)


def _once_before_reading_the_base(
    monkeypatch: pytest.MonkeyPatch, components: Components, action: Callable[[], object]
) -> None:
    """Run ``action`` once, the first time an upload reads the documents it builds on:
    after it has keyed its persons (under a new pseudonym key, if the dataset has none) and
    before its transaction. This is the interleaving two processes produce when they race,
    made deterministic; ``action`` itself runs the real store."""
    store = components.store
    read = store._base
    pending = [action]

    def base(dataset: DatasetPolicy) -> object:
        while pending:
            pending.pop()()
        return read(dataset)

    monkeypatch.setattr(store, "_base", base)


def _key_documents(components: Components) -> list[str]:
    """The KEK each stored pseudonym key of the dataset is sealed under."""
    with components.database.read() as conn:
        return list(
            conn.execute(
                select(dataset_documents.c.kek_id).where(
                    dataset_documents.c.dataset == DATASET,
                    dataset_documents.c.kind == PSEUDONYM_KEY,
                )
            ).scalars()
        )


def _key_creations(components: Components) -> int:
    return sum(e.action == "pseudonym_key.create" for e in components.audit.entries())


def test_two_first_uploads_of_one_person_share_one_key_and_one_allowance(
    components: Components, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second upload stores the dataset's first key while the first holds a key of its
    # own: the first must key its persons again under the stored one, or "p" would be two
    # people with two allowances.
    _once_before_reading_the_base(
        monkeypatch, components, lambda: upload(components, contact("p"), contact("p", "2024-02"))
    )
    first = upload(components, contact("p", "2024-03"), contact("p", "2024-04"))
    assert (first.contacts, first.truncated) == (1, 1)
    later = upload(components, contact("p", "2024-05"))
    assert (later.contacts, later.truncated) == (0, 1)
    assert sum(contacts_by_cell(components).values()) == PERSON_BOUND
    assert len(_key_documents(components)) == 1 and _key_creations(components) == 1


def test_a_rotation_during_the_first_upload_stores_the_key_under_the_new_primary(
    components: Components, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotation = KeyRotation(components.database, components.keyring, components.audit)
    old = components.keyring.primary_kek_id
    _once_before_reading_the_base(monkeypatch, components, lambda: rotation.run(rotation.start()))
    first = upload(components, contact("p"), contact("p", "2024-02"))
    assert (first.contacts, first.truncated) == (2, 0)
    # Nothing, the new key included, is left under the KEK the rotation replaced.
    assert _key_documents(components) == [components.keyring.primary_kek_id] != [old]
    rotation.retire(old)
    later = upload(components, contact("p", "2024-03"), contact("p", "2024-04"))
    assert (later.contacts, later.truncated) == (1, 1)
    assert _key_creations(components) == 1


@pytest.mark.slow
def test_two_processes_uploading_the_same_person_never_both_spend_the_allowance(
    components: Components, settings: Settings, tmp_path: Path
) -> None:
    script = tmp_path / "uploader.py"
    script.write_text(
        "import sys\n"
        "from service.components import Components\n"
        "from service.config import Settings\n"
        "from service.store.ingest import parse_batch\n"
        "c = Components.open(Settings.from_env())\n"
        f"dataset = c.exchange.policies.datasets[{DATASET!r}]\n"
        f"body = ({HEADER!r} + '\\n' + {contact('shared')!r} + '\\n' + "
        f"{contact('shared', '2024-02')!r} + '\\n').encode()\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    a = parse_batch(body, content_type='text/csv', form='contacts', dataset=dataset)\n"
        "    print(c.store.add(dataset, a, form='contacts', actor='test').contacts, flush=True)\n"
    )
    env = environment({**settings_variables(settings), "PYTHONPATH": str(ROOT)})
    uploads = 8
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(uploads)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    kept = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        kept += [int(line) for line in out.split()]
    # 16 batches of two contacts each: the shared person keeps three in all, whichever
    # process got there first.
    assert len(kept) == 2 * uploads
    assert sum(kept) == PERSON_BOUND
    assert sum(contacts_by_cell(components).values()) == PERSON_BOUND
    check = components.store.check_cells(components.exchange.policies.datasets[DATASET])
    assert check.agree and check.batches == 2 * uploads


def test_a_refused_first_upload_with_persons_stores_no_pseudonym_key_and_no_audit_entry(
    components: Components,
) -> None:
    dataset = components.exchange.policies.datasets[DATASET]
    full = parse_batch(
        (
            "month,country,channel,caller_type,referral_source,contacts,minutes\n"
            f"2024-01,GB,chat,self_concerned,police_warning,{2**31 - 1},0\n"
        ).encode(),
        content_type="text/csv",
        form="cells",
        dataset=dataset,
    )
    components.store.add(dataset, full, form="cells", actor="test")
    entries = list(components.audit.entries())
    # The dataset's totals would pass what the engine's integers hold: refused, after the
    # persons were keyed under a new pseudonym key.
    with pytest.raises(InvalidBatch):
        upload(components, contact("p"))
    with components.database.read() as conn:
        kinds = set(conn.execute(select(dataset_documents.c.kind)).scalars())
    assert PSEUDONYM_KEY not in kinds
    assert list(components.audit.entries()) == entries
    assert components.audit.verify().ok


def test_no_pseudonym_is_stored_and_the_contributions_are_sealed_to_their_dataset(
    components: Components,
) -> None:
    pseudonym = "caller-7f3a9e2b"
    upload(components, contact(pseudonym), contact(pseudonym, "2024-02"))
    with components.database.read() as conn:
        dump = b"".join(
            repr(row).encode()
            for table in metadata.sorted_tables
            for row in conn.execute(select(table)).all()
        )
        documents = {row.kind: row for row in conn.execute(select(dataset_documents)).all()}
    assert pseudonym.encode() not in dump
    assert set(documents) == {"cells", CONTRIBUTIONS, PSEUDONYM_KEY}
    # Sealed to (dataset, kind): the contributions do not open as another dataset's, nor
    # as the merged cells of their own.
    blob = documents[CONTRIBUTIONS].blob
    open_sealed(components.keyring, blob, dataset=DATASET, batch_id=sealed_label(CONTRIBUTIONS))
    with pytest.raises(Exception, match="integrity"):
        open_sealed(
            components.keyring,
            blob,
            dataset="nl-helpline-2024",
            batch_id=sealed_label(CONTRIBUTIONS),
        )
    with pytest.raises(Exception, match="integrity"):
        open_sealed(components.keyring, blob, dataset=DATASET, batch_id=sealed_label("cells"))


def test_merged_cells_equal_the_sum_of_the_batches_after_uploads_rotation_and_reencryption(
    components: Components,
) -> None:
    dataset = components.exchange.policies.datasets[DATASET]

    def summed() -> pl.DataFrame:
        """The sum of every stored batch, each decrypted on its own."""
        with components.database.read() as conn:
            rows = conn.execute(select(batches.c.id, batches.c.blob)).all()
        frames = [
            decode_cells(
                open_sealed(components.keyring, row.blob, dataset=DATASET, batch_id=row.id),
                dataset,
            )
            for row in rows
        ]
        return merge_cells(frames, dataset)

    for month in ("2024-01", "2024-02", "2024-03"):
        upload(components, contact("a", month), contact("b", month, "phone", 30))
    assert components.store.cells(dataset).equals(summed())
    rotation = KeyRotation(components.database, components.keyring, components.audit)
    rotation.run(rotation.start())
    upload(components, contact("c", "2024-04"))
    rotation.run(rotation.start(reencrypt=True))
    upload(components, contact("d", "2024-05", "web", 200))
    fresh = Components.open(components.settings)
    try:
        assert fresh.store.cells(dataset).equals(summed())
        assert fresh.store.check_cells(dataset).agree
    finally:
        fresh.database.dispose()
