"""Key rotation of stored batches: rewrap and re-encrypt, resume after a kill, retire.

Batches are real (sealed by ``BatchStore.add``); content is compared through digests of the
decrypted cells taken before the rotation. The kill test runs ``dpx rotate-keys`` as a
subprocess, SIGKILLs it at random moments while a reader thread keeps decrypting, and
resumes with the same command.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from service.cli import main
from service.components import Components
from service.config import Settings
from service.crypto.envelope import open_sealed
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from service.database.schema import audit_log, batches
from service.store.batches import BatchStore
from service.store.cells import merge_cells
from service.store.ingest import Aggregated, parse_batch
from service.store.rotation import KeyInUse, KeyRotation
from tests.conftest import BOTH_BACKENDS

DATASET = "uk-helpline-2024"
CELLS_CSV = (
    "month,country,channel,caller_type,referral_source,contacts,minutes\n"
    "2024-01,GB,chat,self_concerned,police_warning,{n},{m}\n"
    "2024-02,IE,phone,family_friend,social_media_ad,3,40\n"
)


class Interrupted(Exception):
    """Raised from a progress callback to stop a rotation part-way, as a crash would."""


def aggregated(components: Components, n: int) -> Aggregated:
    dataset = components.exchange.policies.datasets[DATASET]
    body = CELLS_CSV.format(n=n, m=n * 7).encode()
    return parse_batch(body, content_type="text/csv", form="cells", dataset=dataset)


def add_batches(components: Components, count: int) -> None:
    dataset = components.exchange.policies.datasets[DATASET]
    shapes = [aggregated(components, n) for n in range(1, 6)]
    for i in range(count):
        components.store.add(dataset, shapes[i % len(shapes)], form="cells", actor="test")


def digests(components: Components) -> dict[str, str]:
    """sha256 of every batch's decrypted cells, by batch id (fails on any bad batch)."""
    with components.database.read() as conn:
        rows = conn.execute(select(batches.c.id, batches.c.dataset, batches.c.blob)).all()
    return {
        row.id: hashlib.sha256(
            open_sealed(components.keyring, row.blob, dataset=row.dataset, batch_id=row.id)
        ).hexdigest()
        for row in rows
    }


def blobs(components: Components) -> dict[str, tuple[str, bytes]]:
    with components.database.read() as conn:
        rows = conn.execute(select(batches.c.id, batches.c.kek_id, batches.c.blob)).all()
    return {row.id: (row.kek_id, bytes(row.blob)) for row in rows}


def rotation(components: Components) -> KeyRotation:
    return KeyRotation(components.database, components.keyring, components.audit)


def actions(components: Components) -> list[str]:
    with components.database.read() as conn:
        return list(conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq)).scalars())


def interrupt_after(chunks: int) -> object:
    seen = []

    def on_progress(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) >= chunks:
            raise Interrupted()

    return on_progress


@BOTH_BACKENDS
def test_a_rotation_interrupted_part_way_resumes_to_the_same_key(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 12)
    before = digests(components)
    old = components.keyring.primary_kek_id

    plan = rotation(components).start()
    with pytest.raises(Interrupted):
        rotation(components).run(plan, batch_size=5, on_progress=interrupt_after(1))

    # A fresh process: the keyring file already names the new primary.
    again = Components.open(settings)
    try:
        assert again.keyring.primary_kek_id == plan.kek_id != old
        assert rotation(again).batches_by_kek() == {plan.kek_id: 5, old: 7}
        resumed = rotation(again).start()
        assert (resumed.resumed, resumed.kek_id, resumed.pending) == (True, plan.kek_id, 7)
        report = rotation(again).run(resumed, batch_size=5)
        assert report.moved == 7
        assert rotation(again).batches_by_kek() == {plan.kek_id: 12}
        assert digests(again) == before
        assert again.audit.verify().ok
    finally:
        again.database.dispose()
    assert actions(components)[-7:] == [
        "key.rotate.start",
        "key.rewrap",
        "key.rotate.resume",
        "key.rewrap",
        "key.rewrap",
        "key.rewrap",  # the dataset's sealed documents
        "key.rotate.finish",
    ]


def test_a_rotation_killed_after_its_last_batch_finishes_without_adding_a_key(
    components: Components,
) -> None:
    add_batches(components, 4)
    plan = rotation(components).start()
    with pytest.raises(Interrupted):
        rotation(components).run(plan, batch_size=4, on_progress=interrupt_after(1))
    assert rotation(components).pending() == 0

    resumed = rotation(components).start()
    assert (resumed.resumed, resumed.kek_id, resumed.pending) == (True, plan.kek_id, 0)
    rotation(components).run(resumed)
    assert len(components.keyring.kek_ids()) == 2

    # Once finished, the next run is a new rotation with a new key.
    following = rotation(components).start()
    assert not following.resumed and following.kek_id != plan.kek_id
    assert len(components.keyring.kek_ids()) == 3


def test_the_keyring_names_the_new_primary_before_any_batch_moves(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 3)
    plan = rotation(components).start()
    on_disk = Keyring.load(settings.keyring_path)
    assert on_disk.primary_kek_id == plan.kek_id
    assert set(rotation(components).batches_by_kek()) == {plan.previous}


def test_rewrap_keeps_each_ciphertext_and_reencrypt_replaces_it(components: Components) -> None:
    add_batches(components, 6)
    before, content = blobs(components), digests(components)

    rewrapped = rotation(components).run(rotation(components).start(), batch_size=4)
    after_rewrap = blobs(components)
    assert rewrapped.moved == 6
    for batch_id, (kek_id, blob) in after_rewrap.items():
        assert kek_id == rewrapped.kek_id and blob != before[batch_id][1]
        # Only the header (KEK id, wrap nonce, wrapped key) changed: same data nonce and
        # ciphertext, so the data key is the same.
        assert blob[-60:] == before[batch_id][1][-60:]

    reencrypted = rotation(components).run(rotation(components).start(reencrypt=True), batch_size=4)
    assert reencrypted.reencrypt and reencrypted.moved == 6
    for batch_id, (kek_id, blob) in blobs(components).items():
        assert kek_id == reencrypted.kek_id
        assert blob[-60:] != after_rewrap[batch_id][1][-60:]
    assert digests(components) == content


def test_retire_refuses_while_a_batch_is_under_the_key(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 5)
    old = components.keyring.primary_kek_id
    plan = rotation(components).start()
    with pytest.raises(Interrupted):
        rotation(components).run(plan, batch_size=2, on_progress=interrupt_after(1))

    with pytest.raises(KeyInUse, match=f"{old} still protects 3 batches"):
        rotation(components).retire(old)
    with pytest.raises(KeyInUse, match=f"{plan.kek_id} is the primary"):
        rotation(components).retire(plan.kek_id)
    with pytest.raises(UnknownKey, match="kek-00000000"):
        rotation(components).retire("kek-00000000")
    assert old in Keyring.load(settings.keyring_path).kek_ids()

    rotation(components).run(rotation(components).start())
    rotation(components).retire(old)
    assert Keyring.load(settings.keyring_path).kek_ids() == [plan.kek_id]
    assert actions(components)[-1] == "key.retire"
    assert components.audit.verify().ok


def test_a_batch_left_under_a_retired_key_no_longer_opens(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 3)
    old = components.keyring.primary_kek_id
    stale_id, (_, stale_blob) = next(iter(blobs(components).items()))
    rotation(components).run(rotation(components).start())
    rotation(components).retire(old)
    # Restore a pre-rotation copy of one batch, as a restored backup would.
    with components.database.write() as conn:
        conn.execute(
            update(batches).where(batches.c.id == stale_id).values(blob=stale_blob, kek_id=old)
        )

    fresh = Components.open(settings)
    try:
        dataset = fresh.exchange.policies.datasets[DATASET]
        with pytest.raises(IntegrityError, match=f"{stale_id}.*{old}.*does not hold"):
            fresh.store.check_cells(dataset)
        with pytest.raises(IntegrityError, match=stale_id):
            rotation(fresh).run(rotation(fresh).start())
    finally:
        fresh.database.dispose()


def test_a_running_service_reads_and_uploads_across_a_rotation_in_another_process(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 4)
    dataset = components.exchange.policies.datasets[DATASET]
    expected = components.store.cells(dataset).sort(components.store.cells(dataset).columns)
    admin = Components.open(settings)  # the dpx process, with its own keyring
    try:
        old = admin.keyring.primary_kek_id
        plan = rotation(admin).start()
        # The service still holds only the old KEK, and uploads under its own primary
        # would use it; it takes the new primary from the file when it commits.
        assert components.keyring.kek_ids() == [old]
        added = aggregated(components, 2)
        components.store.add(dataset, added, form="cells", actor="test")
        assert components.keyring.primary_kek_id == plan.kek_id
        rotation(admin).run(plan)
        rotation(admin).retire(old)

        service_view = BatchStore(components.database, components.keyring, components.audit)
        cells = service_view.cells(dataset)
        assert cells.equals(merge_cells([expected, added.cells], dataset))
        assert set(rotation(admin).batches_by_kek()) == {plan.kek_id}
    finally:
        admin.database.dispose()


def test_a_service_that_never_saw_the_new_key_reloads_it_to_read(
    components: Components, settings: Settings
) -> None:
    add_batches(components, 2)
    dataset = components.exchange.policies.datasets[DATASET]
    service = Components.open(settings)  # loaded before the rotation
    try:
        rotation(components).run(rotation(components).start())
        assert service.keyring.kek_ids() == [components.keyring.kek_ids()[0]]
        # Two batches of the same two cells (1 + 3 and 2 + 3 contacts), merged.
        assert service.store.cells(dataset).get_column("contacts").to_list() == [3, 6]
        assert service.keyring.kek_ids() == components.keyring.kek_ids()
    finally:
        service.database.dispose()


def test_a_batch_size_below_one_is_refused(components: Components) -> None:
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        rotation(components).run(rotation(components).start(), batch_size=0)


# -- kill and resume --------------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_AUDIT_CHECKPOINT_EVERY": str(settings.audit_checkpoint_every),
    }


@pytest.fixture
def reader(settings: Settings) -> Iterator[list[BaseException]]:
    """A thread that decrypts every batch in a loop, as queries do, until the test ends;
    yields the errors it met (none expected)."""
    service = Components.open(settings)
    dataset = service.exchange.policies.datasets[DATASET]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                # A fresh store each time: its cache would otherwise skip decryption.
                BatchStore(service.database, service.keyring, service.audit).cells(dataset)
            except BaseException as error:  # noqa: BLE001 - any failure is the finding
                errors.append(error)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    yield errors
    stop.set()
    thread.join(timeout=30)
    service.database.dispose()


@pytest.mark.slow
def test_rotate_keys_killed_at_random_moments_always_resumes(
    components: Components, settings: Settings, reader: list[BaseException]
) -> None:
    add_batches(components, 300)
    before = digests(components)
    env = cli_env(settings)
    runner = CliRunner()
    chance = random.Random(os.environ.get("DPX_TEST_SEED", "rotation"))
    dpx = str(Path(sys.executable).parent / "dpx")
    command = [dpx, "rotate-keys", "--batch-size", "2"]
    # How long the command takes here to move the 300 batches (it reports it when done),
    # so that kills spread over the moving itself.
    calibration = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    moved = re.search(r"finished: 300 batches moved in ([0-9.]+) s", calibration.stdout)
    assert moved, calibration.stdout
    duration = max(float(moved.group(1)), 0.05)
    for usage in rotation(components).usage():
        if usage.status == "active":
            rotation(components).retire(usage.kek_id)
    midway = 0
    for run in range(20):
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            if run % 5 == 4:
                # Some kills land while the command starts or saves the keyring.
                time.sleep(chance.uniform(0.0, 3.0))
            else:
                first = process.stdout.readline()
                assert first.startswith(("rotating to", "resuming rotation")), first
                time.sleep(chance.uniform(0.0, 0.9 * duration))
            process.send_signal(signal.SIGKILL)
            process.wait()
        counts = rotation(components).batches_by_kek()
        components.keyring.reload()
        primary = components.keyring.primary_kek_id
        if 0 < counts.get(primary, 0) < 300:
            midway += 1

        resumed = runner.invoke(main, ["rotate-keys", "--batch-size", "50"], env=env)
        assert resumed.exit_code == 0, resumed.output
        components.keyring.reload()
        assert rotation(components).batches_by_kek() == {components.keyring.primary_kek_id: 300}
        assert digests(components) == before
        # Keep the keyring small: retire every key no batch uses any more.
        for usage in rotation(components).usage():
            if usage.status == "active":
                rotation(components).retire(usage.kek_id)
    assert midway >= 5, f"only {midway} of 20 kills landed part-way through"
    assert reader == []
    assert components.audit.verify().ok
