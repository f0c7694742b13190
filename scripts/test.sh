#!/usr/bin/env bash
# The full test run: CPU tests, then the SLURM suite on a local cluster when it can be started here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -x .ci/slurm_up.sh ] && [ "${LIT_LORA_SKIP_SLURM:-0}" != 1 ]; then
  bash .ci/slurm_up.sh
fi
$PY -m pytest -q --timeout 900 -p no:cacheprovider
