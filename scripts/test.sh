#!/usr/bin/env bash
# The full test run: CPU tests, then the SLURM suite on a local cluster when it can be started here.
#   PY=.venv/bin/python bash scripts/test.sh [pytest arguments …]
# --durations 25: the slowest tests are listed at the end, to keep the run near 30 minutes; every test's time is
# in build/test-report.xml (JUnit XML, what CI dashboards read)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# lit-lora and the sbatch jobs of the SLURM suite (which inherit this environment) run from PY's environment
PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
export PATH
if [ -x .ci/slurm_up.sh ] && [ "${LIT_LORA_SKIP_SLURM:-0}" != 1 ]; then
  bash .ci/slurm_up.sh
fi
"$PY" -m pytest -q --timeout 900 --durations 25 --junitxml build/test-report.xml -p no:cacheprovider "$@"
