"""Synopsis answers through the Python client and ``dpx-partner --synopsis``, against a live
dpx (gunicorn) whose DPO has built the nl-helpline-2024 synopsis with ``dpx synopsis build``."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from dpx_client import DpxClient
from dpx_client.cli import main as partner_cli
from live_dpx import LiveDpx

from service.cli import main as dpx

pytestmark = pytest.mark.slow

NL = "nl-helpline-2024"


@pytest.fixture(scope="module")
def built(live: LiveDpx) -> str:
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("DPX_")}
    env.update({k: v for k, v in live.env.items() if k.startswith("DPX_")})
    runner = CliRunner()
    uploaded = runner.invoke(dpx, ["demo-data", "--dataset", NL, "--contacts", "3500"], env=env)
    assert uploaded.exit_code == 0, uploaded.output
    done = runner.invoke(dpx, ["synopsis", "build", NL], env=env)
    assert done.exit_code == 0, done.output
    assert "rho 0.5 charged" in done.stdout
    listed = runner.invoke(dpx, ["synopsis", "list"], env=env)
    synopsis_id = done.stdout.split()[1]
    assert f"{NL}\t{synopsis_id}\t" in listed.stdout and "\tcurrent\t" in listed.stdout
    return synopsis_id


def test_the_client_asks_the_synopsis_and_gets_a_free_verified_release(
    live: LiveDpx, built: str
) -> None:
    with DpxClient(live.url, live.tokens["no-police"]) as client:
        estimate = client.estimate(dataset=NL, group_by=["month"], source="synopsis")
        assert estimate["source"] == "synopsis" and estimate["synopsis"] == built
        release = client.query(dataset=NL, group_by=["month"], source="synopsis")
        assert release.document["source"] == {"synopsis": built}
        assert release.privacy["cost"] == {"rho": "0"}
        assert client.verify(release)
        frame = release.to_polars()
        assert frame.height == 12 and (frame["value"] >= 0).all()
        budgets = {row["dataset"]: row for row in client.budgets()}
        assert budgets[NL]["spent"] == 0


def test_dpx_partner_query_synopsis_prints_the_source(live: LiveDpx, built: str) -> None:
    env = {"DPX_URL": live.url, "DPX_TOKEN": live.tokens["no-police"]}
    args = ["query", "--dataset", NL, "--by", "referral_source", "--synopsis"]
    result = CliRunner().invoke(partner_cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"answered free from synopsis {built}" in result.stdout
    assert "cost: rho 0" in result.stdout
    outside = CliRunner().invoke(
        partner_cli,
        ["query", "--dataset", NL, "--by", "month", "--by", "country", "--synopsis"],
        env=env,
        catch_exceptions=False,
    )
    assert outside.exit_code != 0
    assert "not_in_synopsis" in outside.output or "declared marginal" in outside.output
