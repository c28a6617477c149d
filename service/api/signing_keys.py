"""Public keys that verify release signatures, current and retired."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.docs import PUBLIC
from service.api.schemas import SigningKeyListSchema

blp = Blueprint(
    "signing_keys", __name__, url_prefix="/v1/signing-keys", description="Release signature keys"
)


@blp.route("")
class SigningKeys(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(
        200,
        SigningKeyListSchema,
        example={
            "keys": [
                {
                    "key_id": "sig-9c500a66",
                    "alg": "Ed25519",
                    "public_key": "HhPity1H9QnUxPN67NawyT729KMmDLD6N0LJWjGgMck=",
                    "status": "current",
                }
            ]
        },
    )
    def get(self) -> dict[str, Any]:
        """Ed25519 public keys (base64 raw 32 bytes) by key id; no authentication needed."""
        return {"keys": current_app.extensions["dpx.keyring"].public_signing_keys()}
