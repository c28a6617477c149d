"""No key bytes ever leave the keyring file: not into the database, the audit log, the
checkpoint file, HTTP bodies (errors above all), CLI output or the logs.

One deployment goes through a busy life (uploads, queries, refused and failing requests, a
tampered batch, key and signing-key rotations with re-encryption and retirement, audit
verification and export) with every logger at DEBUG, SQL statements included. Then every
stored or emitted byte is searched for every key it ever held, raw and as hex and base64.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select, update

from service.cli import main
from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.schema import batches, metadata
from tests.conftest import Tokens, bearer
from tests.crypto.key_bytes import all_key_bytes

DATASET = "uk-helpline-2024"
CELLS = (
    "month,country,channel,caller_type,referral_source,contacts,minutes\n"
    "2024-0{m},GB,chat,self_concerned,police_warning,{n},{minutes}\n"
)


def key_material(keyring: Keyring) -> set[bytes]:
    """Every secret the keyring holds: KEKs, signing private keys, the audit HMAC key."""
    return set(all_key_bytes(keyring))


def encodings(secret: bytes) -> list[bytes]:
    standard = base64.b64encode(secret)
    urlsafe = base64.urlsafe_b64encode(secret)
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        standard,
        standard.rstrip(b"="),
        urlsafe,
        urlsafe.rstrip(b"="),
    ]


def database_bytes(app: Flask) -> bytes:
    """Every value of every table, as bytes (blobs raw, everything else as text)."""
    database = app.extensions["dpx.database"]
    chunks: list[bytes] = []
    with database.read() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    chunks.append(
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
    return b"\n".join(chunks)


def test_no_key_bytes_anywhere_after_a_busy_life(
    app: Flask, tokens: Tokens, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # every SQL statement too
    client = app.test_client()
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_AUDIT_CHECKPOINT_EVERY": "2",
    }
    secrets = key_material(Keyring.load(settings.keyring_path))
    emitted: list[bytes] = []

    def dpx(*args: str) -> None:
        result = CliRunner().invoke(main, list(args), env=env)
        emitted.append(result.output.encode())

    def call(method: str, path: str, **kwargs: object) -> None:
        response = client.open(path, method=method, **kwargs)  # type: ignore[arg-type]
        emitted.append(response.get_data())

    for m in range(1, 4):
        call(
            "POST",
            f"/v1/datasets/{DATASET}/batches?form=cells",
            headers=tokens.owner,
            data=CELLS.format(m=m, n=5 * m, minutes=40 * m),
            content_type="text/csv",
        )
    call(
        "POST",
        "/v1/queries",
        headers=tokens.partner,
        json={"dataset": DATASET, "statistic": "count", "group_by": ["month"], "epsilon": 0.1},
    )
    # Refused and failing requests of every kind.
    call("GET", "/v1/budgets", headers=bearer("dpx_" + "A" * 43))
    call("GET", "/v1/releases/rel_missing", headers=tokens.partner)
    call("POST", "/v1/queries", headers=tokens.partner, json={"dataset": DATASET})
    call(
        "POST",
        f"/v1/datasets/{DATASET}/batches",
        headers=tokens.owner,
        data="month\n2031-01\n",
        content_type="text/csv",
    )
    with app.extensions["dpx.database"].write() as conn:
        victim = conn.execute(select(batches.c.id, batches.c.blob).limit(1)).one()
        tampered = bytes(victim.blob[:-1]) + bytes([victim.blob[-1] ^ 1])
        conn.execute(update(batches).where(batches.c.id == victim.id).values(blob=tampered))
    call(
        "POST",
        "/v1/queries",
        headers=tokens.partner,
        json={"dataset": DATASET, "statistic": "count", "group_by": ["channel"], "epsilon": 0.1},
    )

    dpx("rotate-keys")
    secrets |= key_material(Keyring.load(settings.keyring_path))
    dpx("keys", "list")
    dpx("rotate-signing-key")
    secrets |= key_material(Keyring.load(settings.keyring_path))
    dpx("verify-audit")
    dpx("audit", "export")
    dpx("list-tokens")
    call("GET", "/v1/signing-keys")
    call("GET", "/v1/audit", headers=tokens.dpo)

    haystacks = {
        "database": database_bytes(app),
        "checkpoints": Path(settings.audit_checkpoint_path).read_bytes(),
        "http and cli": b"\n".join(emitted),
        "logs": caplog.text.encode(),
    }
    assert len(secrets) == 5  # two KEKs, two signing keys and the audit key
    assert haystacks["checkpoints"] and haystacks["logs"]
    for where, haystack in haystacks.items():
        for secret in secrets:
            for needle in encodings(secret):
                assert needle not in haystack, f"key material found in the {where}"


def test_a_rotation_with_reencryption_and_retirement_leaks_nothing(
    app: Flask, tokens: Tokens, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # every SQL statement too
    client = app.test_client()
    env = {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
    }
    client.post(
        f"/v1/datasets/{DATASET}/batches?form=cells",
        headers=tokens.owner,
        data=CELLS.format(m=1, n=4, minutes=30),
        content_type="text/csv",
    )
    old = Keyring.load(settings.keyring_path)
    secrets = key_material(old)
    outputs = [
        CliRunner().invoke(main, args, env=env).output
        for args in (
            ["rotate-keys", "--reencrypt"],
            ["rotate-keys", "--retire", old.primary_kek_id],
            ["audit", "export"],
        )
    ]
    secrets |= key_material(Keyring.load(settings.keyring_path))

    haystack = b"\n".join([database_bytes(app), "\n".join(outputs).encode(), caplog.text.encode()])
    for secret in secrets:
        for needle in encodings(secret):
            assert needle not in haystack
    assert "retired" in outputs[1]
