# Sourced by scripts/run and scripts/test: create or update .venv from pyproject.toml.
# The service depends on the partner client, a distribution of its own in client/: both are
# installed together, so pip takes dpx-client from client/ and never from an index.
# Every distribution the service needs is installed at its version in constraints.txt, as in
# the container, so a new release of one changes nothing until scripts/lock takes it in; the
# development tools (pytest, ruff, mypy, ...) take the newest release their ranges allow.
# The install is skipped when neither pyproject.toml nor constraints.txt has changed since
# the last one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_new_venv.sh"
stamp=.venv/.dpx-installed
want="$(cat pyproject.toml client/pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
  || ! .venv/bin/python -c 'import service, dpx_client' 2>/dev/null; then
  echo "installing dpx and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt -e ./client -e ".[postgres,dev]"
  # Replacing an installed dpx that still listed dpx-partner as its own removes the script.
  [ -x .venv/bin/dpx-partner ] \
    || .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e ./client
  echo "$want" > "$stamp"
fi
