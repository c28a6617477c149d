"""dpx cells check / rebuild: the merged cells that queries read against the batches."""

from __future__ import annotations

from click.testing import CliRunner, Result
from sqlalchemy import delete, select, update

from service.cli import main
from service.components import Components
from service.config import Settings
from service.database.schema import dataset_documents
from service.store.ingest import parse_batch
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

DATASET = "uk-helpline-2024"
HEADER = "month,country,channel,caller_type,referral_source,contacts,minutes\n"


def dpx(settings: Settings, *args: str) -> Result:
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    return CliRunner().invoke(main, list(args), env=env)


def upload(components: Components, month: str, contacts: int) -> None:
    dataset = components.exchange.policies.datasets[DATASET]
    body = f"{HEADER}{month},GB,chat,self_concerned,other,{contacts},{contacts * 9}\n".encode()
    batch = parse_batch(body, content_type="text/csv", form="cells", dataset=dataset)
    components.store.add(dataset, batch, form="cells", actor="test")


def cells_row(components: Components) -> tuple[int, bytes]:
    with components.database.read() as conn:
        row = conn.execute(
            select(dataset_documents.c.version, dataset_documents.c.blob).where(
                dataset_documents.c.dataset == DATASET, dataset_documents.c.kind == "cells"
            )
        ).one()
    return int(row.version), bytes(row.blob)


def test_check_agrees_after_uploads(components: Components, settings: Settings) -> None:
    for month in ("2024-01", "2024-02", "2024-01"):
        upload(components, month, 4)
    result = dpx(settings, "cells", "check", DATASET)
    assert result.exit_code == 0, result.output
    assert f"{DATASET}: agree (3 batches, 2 cells)" in result.stdout


def test_a_rolled_back_merged_table_is_found_and_rebuilt(
    components: Components, settings: Settings
) -> None:
    upload(components, "2024-01", 4)
    _, old_blob = cells_row(components)
    upload(components, "2024-02", 5)
    # A restored backup of the merged cells alone: authentic, but one batch short.
    with components.database.write() as conn:
        conn.execute(
            update(dataset_documents)
            .where(dataset_documents.c.dataset == DATASET, dataset_documents.c.kind == "cells")
            .values(blob=old_blob)
        )
    checked = dpx(settings, "cells", "check")
    assert checked.exit_code == 1
    assert f"{DATASET}: 1 of 1 cells differ from the sum of 2 batches" in checked.stdout
    assert "run dpx cells rebuild" in checked.stderr
    # The values themselves are never printed.
    assert "45" not in checked.output

    rebuilt = dpx(settings, "cells", "rebuild", DATASET)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"rebuilt the merged cells of {DATASET} from 2 batches: 2 cells" in rebuilt.stdout
    assert dpx(settings, "cells", "check", DATASET).exit_code == 0
    assert [e.action for e in components.audit.entries()][-1] == "cells.rebuild"


def test_batches_stored_before_merged_cells_are_summed_then_merged(
    components: Components, settings: Settings
) -> None:
    upload(components, "2024-01", 4)
    upload(components, "2024-02", 5)
    # As a deployment upgraded from a dpx without merged cells: batches, no document.
    with components.database.write() as conn:
        conn.execute(delete(dataset_documents))
    fresh = Components.open(settings)
    try:
        dataset = fresh.exchange.policies.datasets[DATASET]
        assert fresh.store.cells(dataset).get_column("contacts").to_list() == [4, 5]
        assert dpx(settings, "cells", "check", DATASET).exit_code == 1
        # The next upload's merged cells cover the earlier batches too.
        upload(fresh, "2024-03", 6)
        assert fresh.store.cells(dataset).get_column("contacts").to_list() == [4, 5, 6]
        assert dpx(settings, "cells", "check", DATASET).exit_code == 0
    finally:
        fresh.database.dispose()


def test_an_unknown_dataset_is_one_line_and_exit_1(settings: Settings) -> None:
    result = dpx(settings, "cells", "rebuild", "nowhere")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: no dataset 'nowhere'"
