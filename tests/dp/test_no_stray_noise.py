"""Every noise draw in the service goes through OpenDP: no other randomness source is used.

Scans the ``service`` package source for ``random``, ``numpy.random`` / ``np.random`` and
numeric draws from ``secrets`` (``randbelow``, ``randbits``, ``choice``, ``SystemRandom``).
Outside ``service/crypto/`` (key material), ``secrets`` may only mint opaque identifiers
(``token_hex``, ``token_urlsafe``, ``token_bytes``) or compare digests: no number it returns
can serve as noise. ``service/store/demo.py`` generates synthetic demo data and is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
EXEMPT = {SERVICE / "store" / "demo.py"}
FORBIDDEN_MODULES = {"random", "numpy.random"}
IDENTIFIER_ONLY = {"token_hex", "token_urlsafe", "token_bytes", "compare_digest"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    allow_secrets = (SERVICE / "crypto") in path.parents
    where = path.relative_to(SERVICE.parent) if SERVICE.parent in path.parents else path.name
    found = []
    for node in ast.walk(tree):
        uses: list[str] = []
        if isinstance(node, ast.Import):
            uses = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            uses = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            uses = [f"{node.value.id}.{node.attr}"]
        for use in uses:
            if use in ("np.random", "numpy.random") or use in FORBIDDEN_MODULES:
                found.append(f"{where}:{node.lineno}: uses {use}")
            elif (
                use.startswith("secrets.")
                and use.removeprefix("secrets.") not in IDENTIFIER_ONLY
                and not allow_secrets
            ):
                found.append(f"{where}:{node.lineno}: uses {use}")
    return sorted(set(found))


def test_scanner_catches_every_forbidden_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import random\n"
        "from numpy import random as r\n"
        "import numpy as np\n"
        "x = np.random.laplace()\n"
        "import secrets\n"
        "from random import gauss\n"
        "y = secrets.randbelow(10)\n"
        "from secrets import SystemRandom\n"
        "z = secrets.token_hex(8)\n",
        encoding="utf-8",
    )
    lines = sorted({int(found.split(":")[1]) for found in _offences(sample)})
    assert lines == [1, 2, 4, 6, 7, 8]


def test_no_noise_outside_opendp() -> None:
    offences = [
        offence
        for path in sorted(SERVICE.rglob("*.py"))
        if path not in EXEMPT
        for offence in _offences(path)
    ]
    assert offences == [], "randomness outside OpenDP:\n" + "\n".join(offences)
