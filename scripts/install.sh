#!/usr/bin/env bash
# Install lit-lora into a project virtual environment, from the lock of the versions the tests passed with.
#
#   bash scripts/install.sh                        # .venv/ in the repository (created once, then reused)
#   VENV=$CONDA_PREFIX bash scripts/install.sh     # an environment you manage (conda, a shared venv)
#   LOCK=none bash scripts/install.sh              # newest releases pyproject.toml allows (make test-latest)
#
# torch: a torch already importable in the environment is kept (a cluster's CUDA build); otherwise a
# machine with an NVIDIA GPU gets the locked release's default (CUDA) build and a machine without one
# the locked CPU build (set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index where the +cpu wheel is
# not on your package index). TORCH_SPEC overrides the requirement.
# Never touches the system interpreter: everything goes into $VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=${LOCK:-requirements/cpu.lock}
LOCKED_SET=requirements/cpu.lock   # torch and the build tools come from it even with LOCK=none

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating the virtual environment $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip() { "$PY" -m pip "$@"; }
locked() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$LOCKED_SET"; }   # the locked version of one package

check_args=()
if "$PY" -c "import torch" 2>/dev/null; then
  check_args=(--keep torch)   # the environment's own build stays
elif [ -n "${TORCH_SPEC:-}" ]; then
  pip install "$TORCH_SPEC"
  check_args=(--keep torch)
elif command -v nvidia-smi >/dev/null 2>&1; then
  torch_cpu=$(locked torch)
  pip install "torch==${torch_cpu%+cpu}"   # the same release, its CUDA build
  check_args=(--keep torch)
else
  pip install "torch==$(locked torch)"
fi

# DeepSpeed's source distribution builds against the installed torch (build isolation would fetch a
# second, CUDA torch): the build tools first, then everything without build isolation.
pip install "setuptools==$(locked setuptools)" "wheel==$(locked wheel)"
if [ "$LOCK" != none ]; then
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  grep -v '^torch==' "$LOCK" > "$reqs"   # torch is the one package the machine decides
  pip install --no-build-isolation -r "$reqs"
  pip install --no-build-isolation --no-deps -e .
  "$PY" scripts/check_lock.py "$LOCK" "${check_args[@]}"
else
  keep_torch=$(mktemp)
  trap 'rm -f "$keep_torch"' EXIT
  "$PY" -c "import torch; print('torch==' + torch.__version__)" > "$keep_torch"   # upgrade all but torch
  pip install --upgrade --upgrade-strategy eager --no-build-isolation -c "$keep_torch" -e ".[dev]"
fi

# DeepSpeed compiles a small C++ op when it runs on a CPU (tests/test_zero_cpu.py): it needs a compiler
if ! command -v c++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq g++
fi
echo "[install] lit-lora is installed in $VENV: activate it with  source $VENV/bin/activate"
