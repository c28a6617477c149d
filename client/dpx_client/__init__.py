"""The partner-side client of dpx: ``DpxClient`` for Python code, ``dpx-partner`` for shells,
and the offline check of a release's signature.

The ``dpx-client`` distribution needs ``requests``, ``cryptography``, ``click`` and ``rich``;
``polars`` and ``pandas`` only for ``Release.to_polars`` and ``Release.to_pandas`` (the
``polars`` and ``pandas`` extras). Nothing here imports the service; the service imports
:mod:`dpx_client.signature` so that it signs exactly what a partner verifies.
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
    "RateLimitedError",
    "Release",
    "UnavailableError",
    "verify_signature",
]
