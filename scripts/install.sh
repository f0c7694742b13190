#!/usr/bin/env bash
# Install lit-lora and its dependencies without pulling CUDA wheels onto a machine with no NVIDIA GPU.
#   bash scripts/install.sh            # TORCH_SPEC overrides the torch requirement (e.g. "torch==2.6.0")
set -euo pipefail
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PY -m pip install "${TORCH_SPEC:-torch}"
  else
    # a CPU build: on these machines the pinned version is a local CPU wheel; elsewhere add
    # PIP_INDEX_URL pointing at PyTorch's CPU index
    $PY -m pip install "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
# DeepSpeed builds against the installed torch; build isolation would fetch a second (CUDA) torch.
if ! $PY -c "import deepspeed" 2>/dev/null; then
  $PY -m pip install "setuptools>=70" wheel
  $PY -m pip install --no-build-isolation "deepspeed>=0.16"
fi
# DeepSpeed compiles a small C++ op when it runs on a CPU (tests/test_zero_cpu.py): it needs a compiler
if ! command -v c++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq g++
fi
$PY -m pip install -e ".[dev]"
