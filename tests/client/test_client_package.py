"""The ``dpx-client`` distribution on its own: installed from ``client/`` into a fresh
virtualenv exactly as README says, it brings none of the service's dependencies, and the
README's partner examples run with it against a live dpx."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_dpx import LiveDpx

from tests.live_server import ROOT, environment

pytestmark = pytest.mark.slow

SERVICE_ONLY = {"flask", "opendp", "sqlalchemy", "gunicorn", "pyarrow", "dpx"}
README_URL = "http://127.0.0.1:8000"
PLACEHOLDER_ID = "rel_…"


@dataclass(frozen=True)
class Examples:
    """The fenced code blocks of README's section for partners, by what they do."""

    install: str
    commands: list[str]
    client: str
    verify_alone: str


def _partner_examples() -> Examples:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## For partners") :]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)
    shell = [code for language, code in blocks if language == "sh"]
    python = [code for language, code in blocks if language == "python"]
    (install,) = [code for code in shell if "pip install" in code]
    (commands,) = [code for code in shell if "dpx-partner datasets" in code]
    (client,) = [code for code in python if "DpxClient" in code]
    (verify_alone,) = [code for code in python if "Ed25519PublicKey" in code]
    lines = commands.replace("\\\n", " ").splitlines()
    return Examples(
        install=install,
        commands=[line for line in lines if line.strip() and not line.startswith("export ")],
        client=client,
        verify_alone=verify_alone,
    )


def _shell_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a partner's shell: no dpx settings, no virtualenv of
    the service, and ``python3`` the interpreter the tests run on."""
    env = {k: v for k, v in environment(extra or {}).items() if k != "VIRTUAL_ENV"}
    interpreter = Path(getattr(sys, "_base_executable", sys.executable)).parent
    env["PATH"] = f"{interpreter}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A partner's folder holding a copy of ``client/``, where README's install lines ran."""
    folder = tmp_path_factory.mktemp("partner")
    shutil.copytree(
        ROOT / "client",
        folder / "client",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _partner_examples().install],
        cwd=folder,
        env=_shell_environment(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def _installed(checkout: Path) -> set[str]:
    listing = subprocess.run(
        [
            str(checkout / "partner" / "bin" / "python"),
            "-I",  # isolated: what the venv holds, not what the current folder does
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(listing.stdout)}


def test_the_client_installs_without_the_service_or_its_dependencies(checkout: Path) -> None:
    installed = _installed(checkout)

    assert not installed & SERVICE_ONLY
    assert {"dpx-client", "requests", "cryptography", "polars", "pandas"} <= installed
    assert (checkout / "partner" / "bin" / "dpx-partner").exists()


@pytest.fixture(scope="module")
def commands(checkout: Path, live: LiveDpx) -> dict[str, str]:
    """README's partner commands, run in order in the partner's folder: each line's output.

    ``rel_…`` stands for the id of the release the commands wrote to release.json.
    """
    env = _shell_environment(
        {
            "PATH": f"{checkout / 'partner' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "DPX_URL": live.url,
            "DPX_TOKEN": live.tokens["no-police"],
        }
    )
    outputs = {}
    for line in _partner_examples().commands:
        if PLACEHOLDER_ID in line:
            release = json.loads((checkout / "release.json").read_text(encoding="utf-8"))
            line = line.replace(PLACEHOLDER_ID, release["release_id"])
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs[line] = done.stdout
    return outputs


def test_readmes_partner_commands_run_with_the_client_alone(
    checkout: Path, commands: dict[str, str]
) -> None:
    release = json.loads((checkout / "release.json").read_text(encoding="utf-8"))
    downloaded = (checkout / "release.csv").read_text(encoding="utf-8")
    assert downloaded.splitlines()[0] == "channel,value,ci_low,ci_high,release_id"
    assert {line.rsplit(",", 1)[1] for line in downloaded.splitlines()[1:]} == {
        release["release_id"]
    }
    last = commands[list(commands)[-1]]
    assert f"{release['release_id']}: signature valid" in last
    assert downloaded in last


def test_readmes_python_examples_run_with_the_client_alone(
    checkout: Path, live: LiveDpx, commands: dict[str, str]
) -> None:
    examples = _partner_examples()
    python = str(checkout / "partner" / "bin" / "python")
    env = _shell_environment({"DPX_TOKEN": live.tokens["no-police"]})
    client = examples.client.replace(README_URL, live.url)
    client += '\nprint(frame.schema["month"], csv_text == release.to_csv())\n'

    done = subprocess.run(
        [python, "-c", client],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Date", "True"]

    # The check with cryptography alone, of the release.json the README's commands wrote.
    verified = subprocess.run(
        [python, "-c", examples.verify_alone.replace(README_URL, live.url)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
