"""The ``dpx`` admin and DPO command line: the group, settings and error handling.

Every command reads the same ``DPX_*`` settings as the service. Misuse and failures end
with a non-zero exit status and one readable line on standard error, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from service.components import Components
from service.config import Settings, SettingsError
from service.crypto.errors import CryptoError
from service.policy.errors import PolicySetError
from service.store.errors import BoundsChanged

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    raise click.ClickException(message)


def friendly(command: F) -> F:
    """Turn the expected failures of a command into one line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SettingsError, CryptoError, LookupError, ValueError, BoundsChanged) as error:
            fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
        except PolicySetError as error:
            fail(f"policies refused: {error}")
        return None

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    return Settings.from_env()


@contextmanager
def deployment() -> Iterator[Components]:
    """The deployment's services for one command; database connections closed afterwards."""
    built = Components.open(settings(), serving=False)
    try:
        yield built
    finally:
        built.database.dispose()


@click.group()
@click.version_option(package_name="dpx", prog_name="dpx")
def main() -> None:
    """dpx: differentially private statistics for child-protection helplines."""


# Importing the command modules registers their commands on ``main``.
from service.cli import audit, cells, keys, reload, reports, setup, synopses, tokens  # noqa: E402, F401
