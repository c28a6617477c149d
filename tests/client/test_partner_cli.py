"""``dpx-partner`` against a live dpx: tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dpx_client.cli import main
from live_dpx import LiveDpx

pytestmark = pytest.mark.slow

UK = "uk-helpline-2024"
MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]


def partner(live: LiveDpx, *args: str, token: str | None = None) -> Result:
    env = {"DPX_URL": live.url, "DPX_TOKEN": live.tokens["no-police"] if token is None else token}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_query_prints_a_table_with_intervals_and_the_remaining_budget(live: LiveDpx) -> None:
    result = partner(
        live,
        "query",
        "--dataset",
        UK,
        "--count",
        "--by",
        "month",
        "--filter",
        "referral_source=police_warning",
        "--epsilon",
        "0.2",
    )
    assert result.exit_code == 0, result.output
    for month in MONTHS:
        assert month in result.stdout
    assert "95% interval" in result.stdout
    assert "cost: epsilon 0.2" in result.stdout
    assert "remaining budget: epsilon 1.8 of your grant" in result.stdout


def test_query_json_is_the_signed_release_and_a_repeat_is_cached(live: LiveDpx) -> None:
    args = [
        "query",
        "--dataset",
        UK,
        "--by",
        "channel",
        "--filter",
        "month=2024-01..2024-06",
        "--epsilon",
        "0.1",
        "--json",
    ]
    first = as_json(partner(live, *args))
    assert first["query"]["filters"] == {"month": MONTHS[:6]}
    assert [row["channel"] for row in first["rows"]] == ["phone", "chat", "email", "web"]
    assert first["cached"] is False
    again = as_json(partner(live, *args))
    assert (again["cached"], again["release_id"]) == (True, first["release_id"])
    verified = partner(live, "verify", first["release_id"])
    assert verified.exit_code == 0
    assert "signature valid" in verified.stdout
    shown = partner(live, "release", first["release_id"])
    assert first["release_id"] in shown.stdout and "chat" in shown.stdout
    listed = as_json(partner(live, "releases", "--json"))
    assert first["release_id"] in [r["release_id"] for r in listed["releases"]]


def test_estimate_buys_accuracy_and_spends_nothing(live: LiveDpx) -> None:
    before = as_json(partner(live, "budgets", "--json"))
    estimate = as_json(
        partner(
            live,
            "estimate",
            "--dataset",
            UK,
            "--by",
            "month",
            "--max-error",
            "200",
            "--alpha",
            "0.1",
            "--json",
        )
    )
    assert estimate["accuracy"]["max_error"] <= 200
    assert estimate["accuracy"]["alpha"] == 0.1
    assert 0 < estimate["privacy"]["epsilon"] <= 0.5
    assert as_json(partner(live, "budgets", "--json")) == before
    table = partner(
        live, "estimate", "--dataset", UK, "--filter", "channel=chat,email", "--epsilon", "0.3"
    )
    assert table.exit_code == 0, table.output
    assert "epsilon 0.3" in table.stdout and "discrete_laplace" in table.stdout


def test_query_csv_is_the_download_of_its_release(live: LiveDpx) -> None:
    args = ["query", "--dataset", UK, "--by", "referral_source", "--epsilon", "0.1", "--csv"]
    result = partner(live, *args)
    assert result.exit_code == 0, result.output
    header, *lines = list(csv.reader(io.StringIO(result.stdout)))
    assert header == ["referral_source", "value", "ci_low", "ci_high", "release_id"]
    assert [line[0] for line in lines] == [
        "social_media_ad",
        "police_warning",
        "search_warning",
        "professional",
        "word_of_mouth",
        "other",
    ]
    (release_id,) = {line[-1] for line in lines}
    downloaded = partner(live, "release", release_id, "--csv")
    assert downloaded.exit_code == 0, downloaded.output
    assert downloaded.stdout == result.stdout


def test_json_and_csv_together_is_a_usage_error_that_spends_nothing(live: LiveDpx) -> None:
    before = as_json(partner(live, "budgets", "--json"))
    args = ["query", "--dataset", UK, "--by", "channel", "--epsilon", "0.1", "--json", "--csv"]
    result = partner(live, *args)
    assert result.exit_code == 2
    assert "--json and --csv: choose one" in result.stderr
    assert as_json(partner(live, "budgets", "--json")) == before


def test_datasets_and_budgets_tables(live: LiveDpx) -> None:
    datasets = partner(live, "datasets")
    assert datasets.exit_code == 0, datasets.output
    assert UK in datasets.stdout and "nl-helpline-2024" in datasets.stdout
    budgets = partner(live, "budgets")
    assert budgets.exit_code == 0, budgets.output
    assert "epsilon" in budgets.stdout and "rho" in budgets.stdout


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (["datasets"], "dpx_wrong", "unknown or revoked token (unauthenticated, HTTP 401)"),
        (["datasets"], "", "DPX_TOKEN is not set"),
        (
            ["query", "--dataset", UK, "--sum", "--measure", "minutes", "--epsilon", "0.1"],
            None,
            "allows statistics count",
        ),
        (
            ["query", "--dataset", UK, "--by", "planet", "--epsilon", "0.1"],
            None,
            "'planet' is not a dimension",
        ),
        (["release", "rel_nope"], None, "no release 'rel_nope' (not_found, HTTP 404)"),
    ],
)
def test_errors_are_one_readable_line_and_exit_1(
    live: LiveDpx, args: list[str], token: str | None, message: str
) -> None:
    result = partner(live, *args, token=token)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_a_malformed_filter_is_a_usage_error(live: LiveDpx) -> None:
    result = partner(live, "query", "--dataset", UK, "--filter", "channel", "--epsilon", "0.1")
    assert result.exit_code == 2
    assert "DIMENSION=VALUE" in result.stderr


def test_the_console_script_is_installed(live: LiveDpx) -> None:
    script = Path(sys.executable).parent / "dpx-partner"
    done = subprocess.run(
        [str(script), "budgets", "--json"],
        capture_output=True,
        text=True,
        env={**live.env, "DPX_URL": live.url, "DPX_TOKEN": live.tokens["no-police"]},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {row["dataset"] for row in json.loads(done.stdout)["budgets"]} == {
        UK,
        "nl-helpline-2024",
    }
