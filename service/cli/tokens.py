"""dpx issue-token, revoke-token, rotate-token, list-tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from service.auth.registry import TokenInfo
from service.cli import deployment, fail, friendly, main


@main.command("issue-token")
@click.option("--partner", help="partner id from policies/partners")
@click.option("--owner", help="dataset id the owner uploads to")
@click.option("--dpo", is_flag=True, help="a data-protection officer token")
@friendly
def issue_token(partner: str | None, owner: str | None, dpo: bool) -> None:
    """Issue a token; it is printed once and only its hash is kept."""
    if sum(bool(x) for x in (partner, owner, dpo)) != 1:
        fail("give exactly one of --partner ID, --owner DATASET or --dpo")
    with deployment() as c:
        if partner and partner not in c.exchange.policies.partners:
            fail(f"no partner {partner!r} in {c.settings.policy_dir}/partners")
        if owner and owner not in c.exchange.policies.datasets:
            fail(f"no dataset {owner!r} in {c.settings.policy_dir}/datasets")
        role = "partner" if partner else "owner" if owner else "dpo"
        issued = c.tokens.issue(role, partner or owner)  # type: ignore[arg-type]
    click.echo(issued.token)
    click.echo(
        f"# {issued.token_id}: {role} {partner or owner or ''} (shown once; keep it secret)",
        err=True,
    )


@main.command("revoke-token")
@click.argument("token_id")
@friendly
def revoke_token(token_id: str) -> None:
    """Revoke a token by its id (see list-tokens) at once."""
    with deployment() as c:
        c.tokens.revoke(token_id)
    click.echo(f"revoked {token_id}")


@main.command("rotate-token")
@click.argument("token_id")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="how long the old token keeps working: e.g. 0s, 30m, 24h, 7d",
)
@friendly
def rotate_token(token_id: str, grace: str) -> None:
    """Issue a replacement token; the old one is revoked after the grace period."""
    with deployment() as c:
        issued = c.tokens.rotate(token_id, grace=_duration(grace))
    click.echo(issued.token)
    click.echo(
        f"# {issued.token_id} replaces {token_id}; the old token stops after {grace}", err=True
    )


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"--grace: {text!r} is not a duration like 30m, 24h or 7d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


LIST_HEADER = ("id", "prefix", "role", "subject", "created", "last used", "status")


@main.command("list-tokens")
@friendly
def list_tokens() -> None:
    """Tokens by id: prefix, role, subject, created, last used and status (never the token).

    The status is ``active``; ``active until T (rotated: grace period)`` for a rotated token
    that still works; ``expired T``; or ``revoked T``. Columns are tab-separated, under a
    header line.
    """
    with deployment() as c:
        listed = c.tokens.list()
    now = datetime.now(UTC)
    click.echo("\t".join(LIST_HEADER))
    for t in listed:
        click.echo(
            "\t".join(
                [
                    t.token_id,
                    t.prefix + "…",
                    t.role,
                    t.subject or "-",
                    _stamp(t.created_at),
                    _stamp(t.last_used_at) if t.last_used_at else "never",
                    _status(t, now),
                ]
            )
        )


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def _status(token: TokenInfo, now: datetime) -> str:
    if token.revoked_at is not None and token.revoked_at > now:
        # rotate-token revokes the old token at the end of its grace period.
        return f"active until {_stamp(token.revoked_at)} (rotated: grace period)"
    if token.revoked_at is not None:
        return f"revoked {_stamp(token.revoked_at)}"
    if token.expires_at is not None and token.expires_at <= now:
        return f"expired {_stamp(token.expires_at)}"
    return "active"
