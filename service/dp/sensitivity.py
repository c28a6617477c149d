"""The single source of query sensitivity, derived from the dataset's contribution bounds.

The privacy unit is a person. A person contributes at most ``C = max_contacts_per_person``
contacts in total and at most ``k = max_contacts_per_cell`` (default ``C``) to any one cell
of the released vector; each contact adds 1 to the count (or at most ``measure_magnitude`` in
absolute value to the sum) of exactly one of its ``N = output_cells`` cells. Removing a person
therefore moves the vector of cell aggregates by at most the values below, and a person who
fills cells as described reaches them: they are exact, not just bounds.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal


def sensitivity(
    statistic: Literal["count", "sum"],
    norm: Literal["l1", "l2"],
    *,
    max_contacts_per_person: int,
    max_contacts_per_cell: int | None = None,
    measure_magnitude: int = 1,
    output_cells: int | None = None,
) -> int | float:
    """The largest distance (L1 or L2) one person can move a vector of ``output_cells`` values.

    L1 (an int): ``min(C, N * k) * m``. L2 (a float): the person fills ``min(N, C // k)``
    cells with ``k`` contacts and, if a cell is left, one more with the remaining
    ``C - full * k`` (the sum of squares is convex, so concentrating is worst), giving
    ``m * sqrt(full * k**2 + rest**2)``; returned as the smallest float at least that exact
    root, so the noise is calibrated to the true bound and never below it. ``m`` is 1 for
    counts and the measure's magnitude for sums; ``N`` defaults to unlimited.
    """
    if statistic not in ("count", "sum"):
        raise ValueError(f"statistic must be count or sum, got {statistic!r}")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be l1 or l2, got {norm!r}")
    total = max_contacts_per_person
    per_cell = total if max_contacts_per_cell is None else max_contacts_per_cell
    magnitude = 1 if statistic == "count" else measure_magnitude
    cells = total if output_cells is None else output_cells
    if total < 1 or per_cell < 1:
        raise ValueError("contribution bounds must be at least 1")
    if cells < 1:
        raise ValueError("output_cells must be at least 1")
    if magnitude < 0:
        raise ValueError("measure_magnitude must be >= 0")
    per_cell = min(per_cell, total)
    if norm == "l1":
        return min(total, cells * per_cell) * magnitude
    full_cells = min(cells, total // per_cell)
    rest = total - full_cells * per_cell if full_cells < cells else 0
    return float_sqrt_at_least(magnitude**2 * (full_cells * per_cell**2 + rest**2))


def float_sqrt_at_least(value: int) -> float:
    """The smallest float whose exact square is >= ``value`` (no float rounding below the root).

    OpenDP's Gaussian map accepts an L2 sensitivity as a float: giving it the exact root
    rather than the next integer saves up to a factor ((r + 1) / r)**2 in rho.
    """
    if value < 0:
        raise ValueError("value must be >= 0")
    root = math.sqrt(value)
    while Fraction(root) ** 2 < value:
        root = math.nextafter(root, math.inf)
    while root > 0 and Fraction(math.nextafter(root, 0.0)) ** 2 >= value:
        root = math.nextafter(root, 0.0)
    return root
