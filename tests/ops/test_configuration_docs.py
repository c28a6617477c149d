"""README's configuration table names every setting the service and gunicorn read."""

from __future__ import annotations

import re

from tests.live_server import ROOT


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    read = set()
    for source in ("service/config.py", "gunicorn.conf.py"):
        text = (ROOT / source).read_text()
        # Reads of the environment: env.get("X"), environ["X"], _int(env, "X"), setdefault("X".
        read |= set(
            re.findall(r'(?:env|environ)(?:\.get\(|\[|, |\.setdefault\(\s*)"([A-Z_]+)"', text)
        )
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    table = table[: table.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M))

    assert {"DPX_BIND", "DPX_DATA_DIR", "DPX_LOG_LEVEL"} <= read
    assert read - listed == set()
