"""The single source of query sensitivity, derived from the dataset's contribution bounds.

The privacy unit is a person. A person contributes at most ``C = max_contacts_per_person``
contacts in total and at most ``k = max_contacts_per_cell`` (default ``C``) to any one cell;
each contact adds 1 to the count (or at most ``measure_magnitude`` in absolute value to the
sum) of exactly one cell. Removing a person therefore moves the vector of cell aggregates by
at most the values below.
"""

from __future__ import annotations

import math
from typing import Literal


def sensitivity(
    statistic: Literal["count", "sum"],
    norm: Literal["l1", "l2"],
    *,
    max_contacts_per_person: int,
    max_contacts_per_cell: int | None = None,
    measure_magnitude: int = 1,
) -> int:
    """The largest distance (L1 or L2, rounded up to an integer) one person can move the vector.

    L1: ``C * m``. L2: the person fills ``C // k`` cells with ``k`` contacts and one cell with
    ``C % k`` (the sum of squares is convex, so concentrating is worst), giving
    ``m * sqrt((C // k) * k**2 + (C % k)**2)``, rounded up exactly with integer square roots.
    ``m`` is 1 for counts and the measure's magnitude for sums.
    """
    if statistic not in ("count", "sum"):
        raise ValueError(f"statistic must be count or sum, got {statistic!r}")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be l1 or l2, got {norm!r}")
    total = max_contacts_per_person
    per_cell = total if max_contacts_per_cell is None else max_contacts_per_cell
    magnitude = 1 if statistic == "count" else measure_magnitude
    if total < 1 or per_cell < 1:
        raise ValueError("contribution bounds must be at least 1")
    if magnitude < 0:
        raise ValueError("measure_magnitude must be >= 0")
    per_cell = min(per_cell, total)
    if norm == "l1":
        return total * magnitude
    full_cells, remainder = divmod(total, per_cell)
    squared = magnitude**2 * (full_cells * per_cell**2 + remainder**2)
    return _ceil_sqrt(squared)


def _ceil_sqrt(value: int) -> int:
    """The smallest integer whose square is >= ``value`` (exact, no float rounding)."""
    root = math.isqrt(value)
    return root if root * root == value else root + 1
