"""Settings.from_env: every DPX_* variable, its default, and one readable error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, SettingsError


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("var")
    assert settings.database_url == "sqlite:///var/dpx.sqlite3"
    assert settings.keyring_path == Path("var/keyring.json")
    assert settings.keyring_passphrase is None
    assert settings.policy_dir == Path("policies")
    assert settings.max_upload_bytes == 64 * 1024 * 1024
    assert settings.max_cells == 10_000
    assert settings.audit_checkpoint_every == 100
    assert settings.production is False
    assert settings.audit_checkpoint_path == Path("var/audit-checkpoints.jsonl")


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "DPX_DATA_DIR": "/srv/dpx",
            "DPX_DATABASE_URL": "postgresql+psycopg://dpx@db/dpx",
            "DPX_KEYRING": "/run/secrets/keyring.json",
            "DPX_KEYRING_PASSPHRASE": "correct horse",
            "DPX_POLICY_DIR": "/etc/dpx/policies",
            "DPX_MAX_UPLOAD_BYTES": "1024",
            "DPX_MAX_CELLS": "50",
            "DPX_AUDIT_CHECKPOINT_EVERY": "7",
            "DPX_ENV": "production",
        }
    )
    assert settings == Settings(
        data_dir=Path("/srv/dpx"),
        database_url="postgresql+psycopg://dpx@db/dpx",
        keyring_path=Path("/run/secrets/keyring.json"),
        keyring_passphrase="correct horse",
        policy_dir=Path("/etc/dpx/policies"),
        max_upload_bytes=1024,
        max_cells=50,
        audit_checkpoint_every=7,
        production=True,
    )
    assert settings.audit_checkpoint_path == Path("/srv/dpx/audit-checkpoints.jsonl")


def test_the_data_dir_places_the_default_database_and_keyring() -> None:
    settings = Settings.from_env({"DPX_DATA_DIR": "/data"})
    assert settings.database_url == "sqlite:////data/dpx.sqlite3"
    assert settings.keyring_path == Path("/data/keyring.json")


def test_empty_values_mean_the_default() -> None:
    empty = {
        name: ""
        for name in (
            "DPX_DATA_DIR",
            "DPX_DATABASE_URL",
            "DPX_KEYRING",
            "DPX_KEYRING_PASSPHRASE",
            "DPX_POLICY_DIR",
            "DPX_MAX_UPLOAD_BYTES",
            "DPX_MAX_CELLS",
            "DPX_AUDIT_CHECKPOINT_EVERY",
        )
    }
    assert Settings.from_env(empty) == Settings.from_env({})


def test_the_passphrase_never_shows_in_a_repr() -> None:
    settings = Settings.from_env({"DPX_KEYRING_PASSPHRASE": "correct horse"})
    assert "correct horse" not in repr(settings)


def test_the_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPX_MAX_CELLS", "123")
    assert Settings.from_env().max_cells == 123


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DPX_MAX_UPLOAD_BYTES", "64MB", "DPX_MAX_UPLOAD_BYTES: '64MB' is not a whole number"),
        ("DPX_MAX_CELLS", "0", "DPX_MAX_CELLS: must be positive, got 0"),
        (
            "DPX_AUDIT_CHECKPOINT_EVERY",
            "-5",
            "DPX_AUDIT_CHECKPOINT_EVERY: must be positive, got -5",
        ),
        ("DPX_MAX_CELLS", "1.5", "DPX_MAX_CELLS: '1.5' is not a whole number"),
    ],
)
def test_a_bad_number_is_an_error_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}$"):
        Settings.from_env({name: value})
