"""The partner-side client of dpx: ``DpxClient`` for Python code, ``dpx-partner`` for shells.

Only ``requests``, ``cryptography``, ``click`` and ``rich`` are needed (and the ``polars`` or
``pandas`` extra for ``Release.to_polars`` or ``to_pandas``); nothing here imports the service
itself, whose signer uses :mod:`dpx_client.signature`.
"""

from dpx_client.client import (
    AuthError,
    BudgetExhaustedError,
    ConflictError,
    DpxClient,
    DpxError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    Question,
    RateLimitedError,
    Release,
    UnavailableError,
)
from dpx_client.signature import verify_signature

__all__ = [
    "AuthError",
    "BudgetExhaustedError",
    "ConflictError",
    "DpxClient",
    "DpxError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Question",
    "RateLimitedError",
    "Release",
    "UnavailableError",
    "verify_signature",
]
