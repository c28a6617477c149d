"""compose.yaml: two dpx instances of this image on one PostgreSQL, with Redis beside them.

No Docker engine is needed: the file is parsed and its structure checked against what the
image and the several-instance deployment need.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.live_server import ROOT

INSTANCES = ("dpx-1", "dpx-2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _healthy(service: dict[str, Any], dependency: str) -> bool:
    return service["depends_on"][dependency]["condition"] == "service_healthy"


def test_the_deployment_is_two_dpx_instances_postgres_and_redis(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*INSTANCES, "postgres", "redis"}
    for name in ("postgres", "redis"):
        service = compose["services"][name]
        # A pinned image (never :latest) with a health check the instances wait for.
        assert re.fullmatch(r"[a-z]+:\d+\.\d+(\.\d+)?-\w+", service["image"]), service["image"]
        assert service["healthcheck"]["test"][0] == "CMD"


@pytest.mark.parametrize("name", INSTANCES)
def test_each_instance_runs_this_image_on_the_shared_database(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["build"] == "."
    environment = service["environment"]
    # Compose substitutes ${…} from the operator's environment before anything reads it.
    database = make_url(re.sub(r"\$\{[^}]*\}", "secret", environment["DPX_DATABASE_URL"]))
    assert (database.drivername, database.host, database.database) == (
        "postgresql+psycopg",
        "postgres",
        compose["services"]["postgres"]["environment"]["POSTGRES_DB"],
    )
    # The password comes from the operator's environment and is required, never written here.
    assert "${DPX_DB_PASSWORD:?" in environment["DPX_DATABASE_URL"]
    assert environment["DPX_REDIS_URL"].startswith("redis://redis:6379/")
    assert environment["DPX_KEYRING"] == "/run/secrets/dpx-keyring"
    assert service["secrets"] == ["dpx-keyring"]
    assert f"./policies:{environment['DPX_POLICY_DIR']}:ro" in service["volumes"]
    assert any(v.endswith(":/var/lib/dpx") for v in service["volumes"])
    assert _healthy(service, "redis")


def test_instances_differ_only_in_port_and_data_volume_and_start_one_after_the_other(
    compose: dict[str, Any],
) -> None:
    first, second = (compose["services"][name] for name in INSTANCES)
    ports = [s["ports"][0].rsplit(":", 2) for s in (first, second)]
    assert [p[-1] for p in ports] == ["8000", "8000"]  # the image's DPX_BIND port
    assert ports[0][1] != ports[1][1]
    data = [next(v for v in s["volumes"] if v.endswith(":/var/lib/dpx")) for s in (first, second)]
    # Metrics files and audit checkpoints are per instance.
    assert data[0] != data[1]
    assert {v.split(":")[0] for v in data} <= set(compose["volumes"])
    assert first["environment"] == second["environment"]
    # One `dpx init` at a time: the second waits for the first to be healthy (schema current).
    assert _healthy(first, "postgres")
    assert _healthy(second, "dpx-1")
    assert compose["secrets"]["dpx-keyring"]["file"] == "./keyring.json"
