"""dpx issue-token, rotate-token, revoke-token and list-tokens, against the running app."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from service.cli import main
from service.config import Settings
from tests.conftest import BOTH_BACKENDS, bearer


def dpx(settings: Settings, *args: str) -> Result:
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    return CliRunner().invoke(main, list(args), env=env)


def issue(settings: Settings) -> tuple[str, str]:
    """A partner token and its id, as `dpx issue-token` prints them."""
    result = dpx(settings, "issue-token", "--partner", "no-police")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    token_id = result.stderr.split(":")[0].removeprefix("# ")
    return token, token_id


def accepted(app: Flask, token: str) -> bool:
    status = app.test_client().get("/v1/budgets", headers=bearer(token)).status_code
    assert status in (200, 401)
    return status == 200


def listing(settings: Settings) -> dict[str, list[str]]:
    result = dpx(settings, "list-tokens")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == [
        "id",
        "prefix",
        "role",
        "subject",
        "created",
        "last used",
        "status",
    ]
    return {line.split("\t")[0]: line.split("\t") for line in lines}


def test_a_rotated_token_keeps_working_for_its_grace_period(app: Flask, settings: Settings) -> None:
    old, old_id = issue(settings)

    result = dpx(settings, "rotate-token", old_id, "--grace", "1h")

    assert result.exit_code == 0, result.output
    new = result.stdout.strip()
    assert new != old and f"replaces {old_id}" in result.stderr
    assert accepted(app, new) and accepted(app, old)
    assert listing(settings)[old_id][-1].startswith("active until ")
    assert listing(settings)[old_id][-1].endswith("(rotated: grace period)")


def test_a_rotated_token_without_grace_stops_at_once(app: Flask, settings: Settings) -> None:
    old, old_id = issue(settings)

    new = dpx(settings, "rotate-token", old_id, "--grace", "0s").stdout.strip()

    assert accepted(app, new) and not accepted(app, old)
    assert listing(settings)[old_id][-1].startswith("revoked ")
    refused = dpx(settings, "rotate-token", old_id)
    assert refused.exit_code == 1 and f"no active token with id {old_id}" in refused.stderr


@BOTH_BACKENDS
def test_a_rotated_token_found_leaked_in_its_grace_period_is_revoked_at_once(
    app: Flask, settings: Settings
) -> None:
    old, old_id = issue(settings)
    new = dpx(settings, "rotate-token", old_id, "--grace", "7d").stdout.strip()
    assert accepted(app, old)

    result = dpx(settings, "revoke-token", old_id)

    assert result.exit_code == 0, result.output
    assert not accepted(app, old) and accepted(app, new)
    assert listing(settings)[old_id][-1].startswith("revoked ")
    again = dpx(settings, "revoke-token", old_id)
    assert again.exit_code == 1 and "no active token" in again.stderr


@BOTH_BACKENDS
def test_rotating_a_token_again_ends_it_sooner_never_later(app: Flask, settings: Settings) -> None:
    old, old_id = issue(settings)
    assert dpx(settings, "rotate-token", old_id, "--grace", "1h").exit_code == 0
    ends = listing(settings)[old_id][-1]

    longer = dpx(settings, "rotate-token", old_id, "--grace", "7d")

    assert longer.exit_code == 0, longer.output
    assert listing(settings)[old_id][-1] == ends
    shorter = dpx(settings, "rotate-token", old_id, "--grace", "0s")
    assert shorter.exit_code == 0, shorter.output
    assert not accepted(app, old)
    assert accepted(app, longer.stdout.strip()) and accepted(app, shorter.stdout.strip())


def test_a_revoked_token_is_refused_at_once(app: Flask, settings: Settings) -> None:
    token, token_id = issue(settings)
    assert accepted(app, token)

    result = dpx(settings, "revoke-token", token_id)

    assert result.exit_code == 0 and f"revoked {token_id}" in result.stdout
    assert not accepted(app, token)
    again = dpx(settings, "revoke-token", token_id)
    assert again.exit_code == 1 and "no active token" in again.stderr


def test_list_tokens_never_shows_a_token(settings: Settings) -> None:
    tokens = [issue(settings) for _ in range(3)]
    dpx(settings, "issue-token", "--dpo")
    rotated = dpx(settings, "rotate-token", tokens[0][1]).stdout.strip()

    result = dpx(settings, "list-tokens")

    assert result.exit_code == 0
    for token in [t for t, _ in tokens] + [rotated]:
        assert token not in result.output
        assert token[10:20] not in result.output  # not even beyond the 10-character prefix
    rows = listing(settings)
    assert len(rows) == 5
    for token, token_id in tokens:
        assert rows[token_id][1:4] == [token[:10] + "…", "partner", "no-police"]


@pytest.mark.parametrize("grace", ["soon", "5", "-1h", "1w", "h"])
def test_a_malformed_grace_is_refused_and_nothing_changes(
    app: Flask, settings: Settings, grace: str
) -> None:
    token, token_id = issue(settings)

    result = dpx(settings, "rotate-token", token_id, "--grace", grace)

    assert result.exit_code == 1
    assert "is not a duration like 30m, 24h or 7d" in result.stderr
    assert accepted(app, token) and len(listing(settings)) == 1


def test_token_commands_are_in_the_audit_log_without_the_token(
    app: Flask, settings: Settings
) -> None:
    token, token_id = issue(settings)
    new = dpx(settings, "rotate-token", token_id, "--grace", "0s").stdout.strip()

    exported = dpx(settings, "audit", "export")

    assert [line for line in exported.stdout.splitlines() if token_id in line]
    assert '"action": "token.revoke"' in exported.stdout
    assert token not in exported.stdout and new not in exported.stdout


def test_dpx_version_names_the_package_version(settings: Settings) -> None:
    from importlib.metadata import version

    result = dpx(settings, "--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dpx, version {version('dpx')}"
