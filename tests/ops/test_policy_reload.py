"""SIGHUP to the gunicorn master reloads the policy files: all or nothing, last good set stays."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from service.components import Components
from tests.dataset_policies import DEMO_POLICIES
from tests.live_server import ROOT, deploy, environment, serve, settings_variables

pytestmark = pytest.mark.slow

UK = "uk-helpline-2024"


def _grant_budgets(url: str, headers: dict[str, str]) -> set[float]:
    """The partner's budget on UK as seen by several requests (so by either worker)."""
    seen = set()
    for _ in range(6):
        response = requests.get(url + "/v1/datasets", headers=headers, timeout=30)
        assert response.status_code == 200
        grants = {d["id"]: d["grant"] for d in response.json()["datasets"]}
        seen.add(grants[UK]["budget"])
    return seen


def _wait_for_budget(url: str, headers: dict[str, str], budget: float) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if _grant_budgets(url, headers) == {budget}:
            return
        time.sleep(0.3)
    raise AssertionError(f"grant budget never became {budget}")


def test_sighup_puts_a_valid_change_in_force_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(DEMO_POLICIES, policies)
    settings = deploy(tmp_path, policies)
    components = Components.open(settings)
    headers = {"Authorization": "Bearer " + components.tokens.issue("partner", "no-police").token}
    partner_file = policies / "partners" / "no-police.yaml"
    original = partner_file.read_text()

    with serve(
        settings_variables(settings), workers=2, log_path=settings.data_dir / "gunicorn.log"
    ) as server:
        assert _grant_budgets(server.url, headers) == {2.0}

        partner_file.write_text(
            original.replace("budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}")
        )
        server.hang_up()
        _wait_for_budget(server.url, headers, 3.0)
        server.wait_for_log("policies reloaded")
        assert (
            "grant no-police -> uk-helpline-2024: budget epsilon 2 -> epsilon 3"
            in server.log_text()
        )

        partner_file.write_text(original.replace("budget: {epsilon: 2.0}", "budget: {epsilon: -1}"))
        server.hang_up()
        text = server.wait_for_log("policy reload refused")
        # HUP starts two new workers each time (2 + 2 + 2): they must serve the last good set.
        server.wait_for_log("Booting worker", times=6)
        server.wait_for_log("Worker exiting", times=4)
        assert _grant_budgets(server.url, headers) == {3.0}
        assert server.process.poll() is None

        errors = [
            json.loads(line)
            for line in server.log_text().splitlines()
            if '"level": "ERROR"' in line
        ]
        assert any(
            e["message"].startswith("partners/no-police.yaml:grants.0.budget") for e in errors
        ), text
        assert all(e["logger"] == "dpx.policy" for e in errors)

    reloads = [e for e in components.audit.entries() if e.action == "policy.reload"]
    assert len(reloads) == 1
    assert components.audit.verify().ok
    components.database.dispose()


def _dpx_reload(settings_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "dpx"), "reload"],
        env=environment(settings_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dpx_reload_reports_an_accepted_and_a_refused_set_and_audits_both(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(DEMO_POLICIES, policies)
    settings = deploy(tmp_path, policies)
    components = Components.open(settings)
    headers = {"Authorization": "Bearer " + components.tokens.issue("partner", "no-police").token}
    partner_file = policies / "partners" / "no-police.yaml"
    original = partner_file.read_text()
    variables = settings_variables(settings)

    with serve(variables, workers=1, log_path=settings.data_dir / "gunicorn.log") as server:
        assert settings.pid_file.read_text().strip() == str(server.process.pid)
        charged = requests.post(
            server.url + "/v1/queries",
            headers=headers,
            json={"dataset": UK, "statistic": "count", "group_by": ["month"], "epsilon": 0.5},
            timeout=30,
        )
        assert charged.status_code == 201, charged.text

        partner_file.write_text(
            original.replace("budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}")
        )
        accepted = _dpx_reload(variables)
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.startswith("accepted: policy version sha256:")
        # The change is shown with what the grant has already spent, not 0.
        assert (
            "grant no-police -> uk-helpline-2024: budget epsilon 2 -> epsilon 3 "
            "(spent epsilon 0.5)" in accepted.stdout
        )
        assert "(spent epsilon 0.5)" in server.wait_for_log("policy change: ")
        _wait_for_budget(server.url, headers, 3.0)

        partner_file.write_text(original.replace("budget: {epsilon: 2.0}", "budget: {epsilon: -1}"))
        refused = _dpx_reload(variables)
        assert refused.returncode == 1
        assert refused.stdout.startswith("refused: 1 defect(s); policy version sha256:")
        assert "partners/no-police.yaml:grants.0.budget" in refused.stdout
        _wait_for_budget(server.url, headers, 3.0)

    actions = [e.action for e in components.audit.entries() if e.action.startswith("policy.")]
    assert actions == ["policy.reload", "policy.reload_refused"]
    refusal = next(e for e in components.audit.entries() if e.action == "policy.reload_refused")
    assert any("grants.0.budget" in d for d in refusal.details["defects"])
    assert components.audit.verify().ok
    components.database.dispose()


def test_dpx_reload_without_a_running_service_says_so(tmp_path: Path) -> None:
    settings = deploy(tmp_path, DEMO_POLICIES)
    result = _dpx_reload(settings_variables(settings))
    assert result.returncode == 1
    assert "no running dpx" in result.stderr and "gunicorn.pid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
