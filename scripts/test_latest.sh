#!/usr/bin/env bash
# Find out whether new upstream releases break lit-lora: a fresh .venv-latest/ with the newest releases
# pyproject.toml allows, the whole suite, then the versions used and the tests that failed.
#   bash scripts/test_latest.sh [pytest arguments …]      # = make test-latest
# torch stays at the locked build (the newest torch on a CPU-only machine would be a multi-GB CUDA
# build); TORCH_SPEC="torch==X" tries another. When it is green: `make lock`, commit the lock and README.
set -uo pipefail
cd "$(dirname "$0")/.."
export VENV=${LATEST_VENV:-.venv-latest}
rm -rf "$VENV"
LOCK=none bash scripts/install.sh || exit 1
report=$(mktemp -d)
PY="$VENV/bin/python" bash scripts/test.sh -rf --junitxml "$report/junit.xml" "$@"
status=$?
echo
echo "== make test-latest: versions used (lock in parentheses where it differs) =="
"$VENV/bin/python" - requirements/cpu.lock "$report/junit.xml" <<'PY'
import re, sys, xml.etree.ElementTree as ET
from importlib import metadata
lock = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", open(sys.argv[1]).read(), flags=re.M))
for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = dist.metadata["Name"]
    pinned = next((v for k, v in lock.items() if re.sub(r"[-_.]+", "-", k).lower() == re.sub(r"[-_.]+", "-", name).lower()), None)
    print(f"  {name}=={dist.version}" + ("" if pinned in (None, dist.version) else f"   (lock: {pinned})"))
try:
    cases = ET.parse(sys.argv[2]).getroot().iter("testcase")
except (OSError, ET.ParseError):
    sys.exit("  no test report was written")
failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("failure") is not None or c.find("error") is not None]
print(f"== {len(failed)} test(s) failed ==", *failed, sep="\n  ")
PY
exit $status
