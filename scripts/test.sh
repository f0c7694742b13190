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
# Two pytest-xdist workers (LIT_LORA_TEST_WORKERS; 0 runs the tests in this process), one test file at a time
# each, the SLURM tests and the DeepSpeed tests each kept on one worker (tests/conftest.py). Most of a test's
# time is a fresh `lit-lora` process importing the stack on one core, so two workers overlap it; each of their
# processes computes on one thread (OMP_NUM_THREADS), so that two of them never fight over the cores.
WORKERS=${LIT_LORA_TEST_WORKERS:-2}
PARALLEL=()
if [ "$WORKERS" != 0 ]; then
  PARALLEL=(-n "$WORKERS" --dist loadgroup)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
"$PY" -m pytest -q "${PARALLEL[@]}" --timeout 900 --durations 25 --junitxml build/test-report.xml \
  -p no:cacheprovider "$@"
