"""Settings, read once from ``DPX_*`` environment variables with embedded defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from limits import parse_many
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError


class SettingsError(ValueError):
    """A setting has a value dpx cannot use; the message names the variable."""


# The databases dpx runs on: SQLite embedded, PostgreSQL for several instances.
DATABASE_BACKENDS = ("sqlite", "postgresql")


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    url = env.get("DPX_DATABASE_URL") or f"sqlite:///{data_dir / 'dpx.sqlite3'}"
    problem = "not a database URL dpx can use"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        # The messages name the dialect, or the text of a port that is not a number, never
        # the URL (which may hold a password).
        raise SettingsError(f"DPX_DATABASE_URL: {problem}: {error}") from None
    if parsed.get_backend_name() not in DATABASE_BACKENDS:
        raise SettingsError(
            f"DPX_DATABASE_URL: {problem}: {parsed.get_backend_name()} is not one of "
            + ", ".join(DATABASE_BACKENDS)
        )
    return url


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be positive, got {value}")
    return value


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    """A rate limit in Flask-Limiter's notation ("30 per minute", "5/second; 100/hour")."""
    raw = env.get(name) or default
    try:
        parse_many(raw)
    except ValueError:
        raise SettingsError(
            f"{name}: {raw!r} is not a rate limit; write it as '30 per minute' or '5/second'"
        ) from None
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}: {raw!r} is not a yes/no value; use 1 or 0")


@dataclass(frozen=True)
class Settings:
    """Everything dpx needs to know about its environment."""

    data_dir: Path = Path("var")
    database_url: str = ""
    keyring_path: Path = Path("var/keyring.json")
    keyring_passphrase: str | None = field(default=None, repr=False)
    policy_dir: Path = Path("policies")
    max_upload_bytes: int = 64 * 1024 * 1024
    max_query_bytes: int = 16 * 1024
    max_cells: int = 10_000
    audit_checkpoint_every: int = 100
    production: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    metrics_dataset_labels: bool = False
    redis_url: str | None = field(default=None, repr=False)
    rate_limit_prefix: str = "dpx"
    rate_limit_unauthenticated: str = "30 per minute"
    rate_limit_queries: str = "120 per minute"

    @property
    def pid_file(self) -> Path:
        """Where the gunicorn master writes its pid (``dpx reload`` signals that process)."""
        return self.data_dir / "gunicorn.pid"

    @property
    def reload_status_file(self) -> Path:
        """Where the master writes the outcome of its last policy reload."""
        return self.data_dir / "policy-reload.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("DPX_DATA_DIR") or "var")
        return cls(
            data_dir=data_dir,
            database_url=_database_url(env, data_dir),
            keyring_path=Path(env.get("DPX_KEYRING") or data_dir / "keyring.json"),
            keyring_passphrase=env.get("DPX_KEYRING_PASSPHRASE") or None,
            policy_dir=Path(env.get("DPX_POLICY_DIR") or "policies"),
            max_upload_bytes=_int(env, "DPX_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_query_bytes=_int(env, "DPX_MAX_QUERY_BYTES", cls.max_query_bytes),
            max_cells=_int(env, "DPX_MAX_CELLS", cls.max_cells),
            audit_checkpoint_every=_int(env, "DPX_AUDIT_CHECKPOINT_EVERY", 100),
            production=(env.get("DPX_ENV", "development") == "production"),
            metrics_token=env.get("DPX_METRICS_TOKEN") or None,
            metrics_dataset_labels=_flag(env, "DPX_METRICS_DATASET_LABELS"),
            redis_url=env.get("DPX_REDIS_URL") or None,
            rate_limit_prefix=env.get("DPX_RATE_LIMIT_PREFIX") or cls.rate_limit_prefix,
            rate_limit_unauthenticated=_rate(
                env, "DPX_RATE_LIMIT_UNAUTHENTICATED", cls.rate_limit_unauthenticated
            ),
            rate_limit_queries=_rate(env, "DPX_RATE_LIMIT_QUERIES", cls.rate_limit_queries),
        )

    @property
    def audit_checkpoint_path(self) -> Path:
        """Append-only file of signed audit checkpoints, kept apart from the database."""
        return self.data_dir / "audit-checkpoints.jsonl"
