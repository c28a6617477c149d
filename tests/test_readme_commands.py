"""The README's two commands work on a fresh clone, with nothing installed by hand."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from service.observability.logs import ACCESS_LOGGER
from tests.live_server import ROOT, free_port


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("clone") / "dpx"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    return target


def _environment() -> dict[str, str]:
    # The clone must not inherit this run's settings or virtualenv; it keeps the test
    # database, so that under CI its PostgreSQL tests run too.
    return {
        k: v
        for k, v in os.environ.items()
        if k == "DPX_TEST_DATABASE_URL" or not k.startswith(("DPX_", "VIRTUAL_ENV", "PYTEST"))
    }


@pytest.mark.slow
def test_scripts_test_builds_the_venv_and_runs_tests(fresh_clone: Path) -> None:
    result = subprocess.run(
        ["scripts/test", "-q", "-m", "not slow", "tests/api/test_api_datasets.py"],
        cwd=fresh_clone,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)
    assert (fresh_clone / ".venv" / "bin" / "dpx").exists()
    # The partner client's own distribution is installed from client/ beside the service.
    assert (fresh_clone / ".venv" / "bin" / "dpx-partner").exists()


@pytest.mark.slow
def test_scripts_run_serves_datasets_to_the_demo_partner(fresh_clone: Path) -> None:
    port = free_port()
    env = dict(_environment(), DPX_BIND=f"127.0.0.1:{port}")
    process = subprocess.Popen(
        ["scripts/run"],
        cwd=fresh_clone,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        token = None
        output: list[str] = []
        deadline = time.monotonic() + 1200
        assert process.stdout is not None
        while token is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"partner token \(no-police\): (\S+)", line)
            if match:
                token = match.group(1)
        assert token, "".join(output[-50:])
        for _ in range(120):
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        response = requests.get(
            f"http://127.0.0.1:{port}/v1/datasets",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200
        assert "uk-helpline-2024" in {d["id"] for d in response.json()["datasets"]}
        # Every request of README's "A first query" works under the demo policies.
        requests_made = _first_query_requests(fresh_clone / "README.md")
        assert len(requests_made) >= 4
        for path, body in requests_made:
            answered = requests.post(
                f"http://127.0.0.1:{port}{path}",
                headers={"Authorization": f"Bearer {token}"},
                json=body,
                timeout=120,
            )
            assert answered.status_code in (200, 201), (path, body, answered.text)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        assert process.stdout is not None
        rest = process.stdout.read()
        process.stdout.close()
    # Quiet enough that the printed tokens stay on screen: apart from one access line per
    # request, the server logs warnings and errors only.
    logged = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    chatter = [entry for entry in logged if entry.get("logger") != ACCESS_LOGGER]
    assert all(entry["level"] in ("WARNING", "ERROR") for entry in chatter), chatter[:5]


def _first_query_requests(readme: Path) -> list[tuple[str, dict[str, object]]]:
    """(path, JSON body) of each POST in the README's "A first query" section."""
    text = readme.read_text()
    section = text[text.index("## A first query") :]
    section = section[: section.index("\n## ", 1)]
    found = []
    for body, url in re.findall(r"-d '(\{.*?\})' \\\n\s*(http://\S+)", section, flags=re.S):
        found.append((url.split("8000", 1)[1], json.loads(body)))
    return found
