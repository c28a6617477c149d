"""The partner-side client of dpx: ``DpxClient`` for Python code, ``dpx-partner`` for shells.

Only ``requests``, ``cryptography`` and (for ``Release.to_polars``) ``polars`` are needed;
nothing here imports the service itself.
"""

from service.client.client import (
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
    verify_signature,
)

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
