#!/usr/bin/env bash
# Re-resolve requirements/cpu.lock with pip-tools (the newest releases pyproject.toml allows), then
# regenerate the README's table of tested versions. Run after `make test-latest` is green; commit both.
#   bash scripts/lock.sh                 # = make lock
#   bash scripts/lock.sh --upgrade-package transformers==5.23.0   # move one package only
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS_VENV:-.venv-tools}
[ -x "$TOOLS/bin/pip-compile" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q "pip-tools==7.6.2"; }
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--upgrade)
CUSTOM_COMPILE_COMMAND="make lock" "$TOOLS/bin/pip-compile" --quiet --extra dev --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links "${args[@]}" \
  --output-file requirements/cpu.lock pyproject.toml requirements/cpu.in
python3 scripts/tested_versions.py --write README.md
