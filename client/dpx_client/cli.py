"""``dpx-partner``: the partner agency's command line over :class:`DpxClient`.

The token comes from ``DPX_TOKEN`` only (a command-line argument would show in every
process listing), the service URL from ``DPX_URL`` or ``--url``. Tables for people,
``--json`` for scripts; every failure is one readable line and exit status 1.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Column, Table

from dpx_client.client import DpxClient, DpxError, Release

DEFAULT_URL = "http://127.0.0.1:8000"
F = TypeVar("F", bound=Callable[..., Any])


def _client(ctx: click.Context) -> DpxClient:
    token = os.environ.get("DPX_TOKEN", "").strip()
    if not token:
        raise click.ClickException("DPX_TOKEN is not set: export the token dpx issued to you")
    url: str = ctx.obj["url"]
    return DpxClient(url, token, timeout=ctx.obj["timeout"])


def _friendly(command: F) -> F:
    """Turn a problem from the service into one line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DpxError as error:
            raise click.ClickException(str(error)) from None

    return wrapper  # type: ignore[return-value]


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))


def _number(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    if isinstance(value, int | float):
        return f"{int(value):,}"
    return str(value)


def _cost(privacy: Mapping[str, Any], *, short: bool = False) -> str:
    if privacy.get("definition") == "zcdp" and short:
        return f"rho {privacy.get('rho'):g}"
    if privacy.get("definition") == "zcdp":
        return (
            f"rho {privacy.get('rho'):g} (epsilon {privacy.get('epsilon', 0):.3g} at "
            f"delta {privacy.get('delta', 0):g})"
        )
    return f"epsilon {privacy.get('epsilon', 0):g}"


def _remaining(budget: Mapping[str, Any]) -> str | None:
    partner = budget.get("partner_remaining") or {}
    dataset = budget.get("dataset_remaining") or {}
    if not partner:
        return None
    unit, left = next(iter(partner.items()))
    return (
        f"remaining budget: {unit} {left:g} of your grant, "
        f"{dataset.get(unit, 0):g} of the dataset's global budget"
    )


@click.group()
@click.option(
    "--url",
    envvar="DPX_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="the dpx service (or set DPX_URL)",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="seconds to wait for each answer",
)
@click.pass_context
def main(ctx: click.Context, url: str, timeout: float) -> None:
    """Differentially private statistics from dpx, for partner agencies.

    Set DPX_TOKEN to your token and DPX_URL to the service.
    """
    ctx.obj = {"url": url, "timeout": timeout}


json_option = click.option(
    "--json", "as_json", is_flag=True, help="print the service's JSON instead of a table"
)
csv_option = click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="print the rows as CSV: dimensions, value, ci_low, ci_high, release_id",
)


def _one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise click.UsageError("--json and --csv: choose one")


@main.command()
@json_option
@click.pass_context
@_friendly
def datasets(ctx: click.Context, as_json: bool) -> None:
    """Datasets you may query, with your grant on each."""
    found = _client(ctx).datasets()
    if as_json:
        _print_json({"datasets": found})
        return
    table = Table(
        Column("dataset", no_wrap=True),
        "privacy",
        Column("your budget left", no_wrap=True),
        "statistics",
        "dimensions",
    )
    for dataset in found:
        privacy = dataset.get("privacy") or {}
        grant = dataset.get("grant") or {}
        unit = privacy.get("budget_unit", "")
        budget = f"{unit} {grant['remaining']:g} of {grant['budget']:g}" if grant else "-"
        table.add_row(
            dataset["id"],
            privacy.get("definition", ""),
            budget,
            ", ".join(grant.get("statistics") or []),
            ", ".join(grant.get("dimensions") or []),
        )
    Console().print(table)


def _parse_filters(specs: Sequence[str]) -> dict[str, Any]:
    """``dim=v1,v2`` keeps values; ``month=2024-01..2024-06`` keeps a month range."""
    filters: dict[str, Any] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name, values = name.strip(), values.strip()
        if not sep or not name or not values:
            raise click.BadParameter(
                f"{spec!r}: write DIMENSION=VALUE[,VALUE…] or month=FROM..TO", param_hint="--filter"
            )
        if ".." in values:
            start, _, end = values.partition("..")
            if name in filters:
                raise click.BadParameter(
                    f"{name}: a range cannot be combined with other values", param_hint="--filter"
                )
            filters[name] = {"from": start.strip(), "to": end.strip()}
            continue
        kept = filters.setdefault(name, [])
        if not isinstance(kept, list):
            raise click.BadParameter(
                f"{name}: a range cannot be combined with other values", param_hint="--filter"
            )
        kept.extend(value.strip() for value in values.split(",") if value.strip())
    return filters


def query_options(command: F) -> F:
    """The options that describe one query, shared by ``estimate`` and ``query``."""
    options = [
        click.option("--dataset", required=True, help="dataset id, e.g. uk-helpline-2024"),
        click.option(
            "--count",
            "statistic",
            flag_value="count",
            default=True,
            help="count contacts (the default)",
        ),
        click.option("--sum", "statistic", flag_value="sum", help="sum a measure"),
        click.option("--mean", "statistic", flag_value="mean", help="mean of a measure"),
        click.option("--measure", help="the measure of --sum or --mean, e.g. minutes"),
        click.option(
            "--by", "group_by", multiple=True, help="group by this dimension (repeat for more)"
        ),
        click.option(
            "--filter",
            "filters",
            multiple=True,
            metavar="DIM=V[,V…]|month=A..B",
            help="keep only these values (repeatable)",
        ),
        click.option("--epsilon", type=float, help="privacy cost (pure DP datasets)"),
        click.option("--rho", type=float, help="privacy cost (zCDP datasets)"),
        click.option(
            "--max-error",
            type=float,
            help="instead of a cost: the accuracy to buy at the lowest cost",
        ),
        click.option(
            "--synopsis",
            is_flag=True,
            help="instead of a cost: answer free from the dataset's synopsis",
        ),
        click.option(
            "--alpha",
            type=float,
            help="1 - confidence of the intervals and of --max-error (default 0.05)",
        ),
        json_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _query_fields(
    dataset: str,
    statistic: str,
    measure: str | None,
    group_by: tuple[str, ...],
    filters: tuple[str, ...],
    epsilon: float | None,
    rho: float | None,
    max_error: float | None,
    alpha: float | None,
    synopsis: bool = False,
) -> dict[str, Any]:
    return {
        "source": "synopsis" if synopsis else None,
        "dataset": dataset,
        "statistic": statistic,
        "measure": measure,
        "group_by": list(group_by),
        "filters": _parse_filters(filters),
        "epsilon": epsilon,
        "rho": rho,
        "accuracy": {"max_error": max_error} if max_error is not None else None,
        "alpha": alpha,
    }


@main.command()
@query_options
@click.pass_context
@_friendly
def estimate(ctx: click.Context, /, as_json: bool, **options: Any) -> None:
    """What a query would cost and how accurate it would be; spends nothing."""
    result = _client(ctx).estimate(**_query_fields(**options))
    if as_json:
        _print_json(result)
        return
    mechanism = result.get("mechanism") or {}
    accuracy = result.get("accuracy") or {}
    table = Table("", "", show_header=False, title=f"estimate for {result.get('dataset')}")
    table.add_row(
        "cost",
        _cost(result.get("privacy") or {})
        + ("  (an identical release exists: free)" if result.get("cached") else ""),
    )
    if result.get("source") == "synopsis":
        table.add_row("source", f"synopsis {result.get('synopsis')}: free, no noise drawn")
    else:
        table.add_row(
            "mechanism",
            f"{mechanism.get('name')} scale {mechanism.get('scale', 0):.4g}"
            f" sensitivity {mechanism.get('sensitivity')}",
        )
    table.add_row(
        "accuracy",
        f"each value within ±{accuracy.get('max_error', 0):,.1f} with "
        f"probability {1 - accuracy.get('alpha', 0.05):.0%}",
    )
    remaining = _remaining(result.get("budget") or {})
    if remaining:
        table.add_row("budget left", remaining.removeprefix("remaining budget: "))
    Console().print(table)


def _question(release: Release) -> str:
    query = release.query
    text = str(query.get("statistic", ""))
    if query.get("measure"):
        text += f" of {query['measure']}"
    if release.group_by:
        text += " by " + ", ".join(release.group_by)
    kept = [
        f"{name}="
        + (
            ",".join(values)
            if len(values) <= 4
            else f"{values[0]},…,{values[-1]} ({len(values)} values)"
        )
        for name, values in (query.get("filters") or {}).items()
    ]
    if kept:
        text += " where " + " ".join(kept)
    return text


def _print_release(release: Release) -> None:
    alpha = float(
        release.document.get("accuracy", {}).get("alpha", release.query.get("alpha", 0.05))
    )
    table = Table(
        *(Column(name, no_wrap=True) for name in release.group_by),
        Column("value", justify="right"),
        Column(f"{1 - alpha:.0%} interval", justify="right", no_wrap=True),
    )
    for row in release.rows:
        low, high = row["ci"]
        table.add_row(
            *(str(row[name]) for name in release.group_by),
            _number(row["value"]),
            f"{_number(low)} … {_number(high)}",
        )
    console = Console()
    console.print(
        f"{release.release_id} · {release.dataset} · {_question(release)}", highlight=False
    )
    console.print(table)
    cost = _cost(release.privacy)
    console.print(
        f"cost: {cost}"
        + ("  (cached: the stored release, charged nothing now)" if release.cached else "")
    )
    source = release.document.get("source") or {}
    if source.get("synopsis"):
        console.print(f"answered free from synopsis {source['synopsis']}")
    remaining = _remaining(release.budget)
    if remaining:
        console.print(remaining)


@main.command()
@query_options
@csv_option
@click.option("--idempotency-key", help="reuse to make a retried run of a script charge once")
@click.pass_context
@_friendly
def query(
    ctx: click.Context,
    /,
    as_json: bool,
    as_csv: bool,
    idempotency_key: str | None,
    **options: Any,
) -> None:
    """Run a query: a signed release, charged unless an identical one exists."""
    _one_format(as_json, as_csv)
    release = _client(ctx).query(**_query_fields(**options), idempotency_key=idempotency_key)
    if as_csv:
        click.echo(release.to_csv(), nl=False)
        return
    if as_json:
        _print_json(release.document)
        return
    _print_release(release)


@main.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, None))
@json_option
@click.pass_context
@_friendly
def releases(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Your stored releases, newest first (the service's pages are followed up to --limit)."""
    found = _client(ctx).releases(limit=limit)
    if as_json:
        _print_json({"releases": [release.document for release in found]})
        return
    table = Table(
        Column("release", no_wrap=True),
        "question",
        Column("cost", no_wrap=True),
        Column("created", no_wrap=True),
    )
    for release in found:
        table.add_row(
            release.release_id,
            f"{release.dataset}: {_question(release)}",
            _cost(release.privacy, short=True),
            str(release.document.get("created_at", ""))[:10],
        )
    Console().print(table)


@main.command()
@click.argument("release_id")
@json_option
@csv_option
@click.pass_context
@_friendly
def release(ctx: click.Context, release_id: str, as_json: bool, as_csv: bool) -> None:
    """One stored release."""
    _one_format(as_json, as_csv)
    if as_csv:
        click.echo(_client(ctx).release_csv(release_id), nl=False)
        return
    found = _client(ctx).release(release_id)
    if as_json:
        _print_json(found.document)
        return
    _print_release(found)


@main.command()
@json_option
@click.pass_context
@_friendly
def budgets(ctx: click.Context, as_json: bool) -> None:
    """Granted, spent and remaining budget per dataset."""
    found = _client(ctx).budgets()
    if as_json:
        _print_json({"budgets": found})
        return
    table = Table(
        Column("dataset", no_wrap=True),
        Column("granted", no_wrap=True),
        "spent",
        "left",
        Column("expires", no_wrap=True),
        Column("dataset left", no_wrap=True),
    )
    for row in found:
        table.add_row(
            row["dataset"],
            f"{row['unit']} {row['granted']:g}",
            f"{row['spent']:g}",
            f"{row['remaining']:g}",
            str(row.get("expires") or "-"),
            f"{row['dataset_remaining']:g} of {row['dataset_global']:g}",
        )
    Console().print(table)


@main.command()
@click.argument("release_id")
@click.pass_context
@_friendly
def verify(ctx: click.Context, release_id: str) -> None:
    """Check a release's Ed25519 signature against the service's published keys."""
    client = _client(ctx)
    found = client.release(release_id)
    if not client.verify(found):
        raise click.ClickException(f"{release_id}: the signature is NOT valid")
    key_id = (found.document.get("signature") or {}).get("key_id")
    click.echo(f"{release_id}: signature valid (Ed25519, key {key_id})")
