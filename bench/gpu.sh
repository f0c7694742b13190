#!/usr/bin/env bash
# The GPU checks and the GPU benches, for one lent H100 / H200 with no network, in under 8 minutes.
#
#   bash bench/gpu.sh                    # results in $OUT if set, else bench/results/
#   bash bench/gpu.sh --dry-run          # any machine: prints the steps, runs the CPU-safe parts of the bench
#   bash bench/gpu.sh --layers 32        # the whole Llama-3-8B shape instead of 8 of its 32 layers (slower)
#   bash bench/gpu.sh --wheels .whl      # an offline machine whose Python has PyTorch: the wheels that
#                                        # bench/wheelhouse.py gathered for it go first on its path
#   bash bench/gpu.sh --only pytest_gpu,generation   # some of the steps, with the whole budget
#
# Uses $PYTHON, else .venv/bin/python, else python / python3 on PATH, and installs nothing into it: --wheels DIR
# installs DIR/*.whl into a temporary folder put ahead of that Python's packages (PYTHONPATH, with the
# working tree, so `python -m lit_lora.cli` and the `lit-lora` command run this checkout). Steps, each with a
# timeout cut from one time budget (--budget, default 420 s), each failure reported loudly (FAILED ... and the
# end of its log), and the next step run anyway:
#   1. env:         GPU, driver and package versions                     -> summary.txt
#   2. pytest_gpu:  python -m pytest -m gpu -v, 6 workers with pytest-xdist, 150 s a test at most (at most 200 s;
#                   each result is in the log as it finishes, and a cut run still prints its failures); a
#                   machine where torch sees no CUDA device fails the step instead of skipping every test
#                                                                        -> pytest_gpu.log, pytest_gpu.xml
#   3. generation:  bench/generation.py on cuda: lit-lora's batched evaluation generation of 64 prompts, 64 new
#                   tokens, against one generate call per row on 16 of them (at most 80 s)
#                                                                        -> generation.log, generation.json
#   4. throughput:  bench/gpu_throughput.py: LoRA bf16 and QLoRA NF4 on a random-init Llama-3-8B-shaped model,
#                   seq 2048, packing when supported: tokens/s, MFU, CUDA peak memory vs lit-lora estimate
#                   (each variant's fit and estimate logs are copied into throughput.log)
#                                                                        -> throughput.log, gpu_throughput.{json,md}
# summary.txt lists every step's exit status. At most 8 files are written to the results folder (a lent
# machine's run returns no more). Exit status: 0 when every step passed, 1 otherwise.
set -u -o pipefail

CALLER_DIR=$PWD
cd "$(dirname "$0")/.." || exit 2
BUDGET=420  # of an 8-minute lease: the machine's start and the copy back take the rest
ONLY=
DRY=0
WHEELS=
LAYERS=8
STEPS=15
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder of wheels}; shift ;;
    --layers) LAYERS=${2:?--layers needs a number}; shift ;;
    --steps) STEPS=${2:?--steps needs a number}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --only) ONLY=${2:?--only needs step names}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for name in ${ONLY//,/ }; do
  case "$name" in
    env|pytest_gpu|generation|throughput) ;;
    *) echo "gpu.sh: --only takes env, pytest_gpu, generation and throughput, not '$name'" >&2; exit 2 ;;
  esac
done
for n in "$LAYERS" "$STEPS" "$BUDGET"; do
  case "$n" in
    ''|*[!0-9]*) echo "gpu.sh: --layers, --steps and --budget take whole numbers, got '$n'" >&2; exit 2 ;;
  esac
done

OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || { echo "gpu.sh: cannot create $OUT_DIR" >&2; exit 2; }
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=$(command -v python || command -v python3 || echo python)
fi
# --wheels: the gathered wheels, unpacked without their dependency checks (the lock resolved them together)
START=$SECONDS  # the budget counts the wheel install too
RUN_EPOCH=$(date +%s)  # files in the results folder older than this are an earlier run's
if [ -n "$WHEELS" ]; then
  case "$WHEELS" in /*) ;; *) WHEELS=$CALLER_DIR/$WHEELS ;; esac   # relative to where gpu.sh was called
  ls "$WHEELS"/*.whl > /dev/null 2>&1 || { echo "gpu.sh: no wheels in $WHEELS" >&2; exit 2; }
  SITE=$(mktemp -d /tmp/lit-lora-site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu.sh: installing the wheels of $WHEELS failed" >&2; exit 2; }
  mkdir -p "$SITE/bin"
  printf '#!/bin/sh\nexec "%s" -m lit_lora.commands "$@"\n' "$PY" > "$SITE/bin/lit-lora"
  chmod +x "$SITE/bin/lit-lora"
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
else  # the tests' `python -m lit_lora.cli` runs from their own folders: this checkout, installed or not
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false \
  PYTHONUNBUFFERED=1 LIT_LORA_VERBOSE=1  # a cut step still leaves what it printed; every traceback and warning
SUMMARY=$OUT_DIR/summary.txt
: > "$SUMMARY"
FAILURES=0

left() { echo $(( BUDGET - (SECONDS - START) )); }
note() { echo "[gpu.sh +$(( SECONDS - START ))s] $*" | tee -a "$SUMMARY"; }

# step NAME CAP COMMAND...: run COMMAND with a timeout of min(CAP, budget left - 15 s), output to NAME.log.
step() {
  local name=$1 cap=$2 remaining t rc
  shift 2
  case ",${ONLY:-$name}," in *",$name,"*) ;; *) note "skip $name (--only $ONLY)"; return ;; esac
  remaining=$(left)
  t=$(( cap < remaining - 15 ? cap : remaining - 15 ))
  if [ "$t" -lt 20 ]; then
    note "FAILED $name: not run, only $remaining s of the ${BUDGET} s budget left"
    FAILURES=$((FAILURES + 1))
    return
  fi
  note "start $name (timeout ${t}s): $*"
  # SIGINT first: pytest then still prints its failures and writes its XML, a Python bench its traceback
  timeout -s INT -k 15 "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    note "ok $name"
  else
    [ "$rc" -eq 124 ] && note "FAILED $name: timed out after ${t}s" || note "FAILED $name: exit $rc"
    FAILURES=$((FAILURES + 1))
    echo "----- last lines of $OUT_DIR/$name.log -----"
    tail -n 25 "$OUT_DIR/$name.log"
    echo "-----"
  fi
}

env_report() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  python: $PY"
  command -v nvidia-smi > /dev/null && nvidia-smi || echo "nvidia-smi: not found"
  echo "lit-lora: $(command -v lit-lora || echo 'not on PATH (python -m lit_lora.commands)')"
  "$PY" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "peft", "lightning", "bitsandbytes", "datasets", "accelerate", "flash_attn"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name}: not importable ({type(err).__name__}: {err})")
import torch
cuda = torch.cuda.is_available()
print("cuda available:", cuda, "| device:", torch.cuda.get_device_name(0) if cuda else "-")
PY
}

note "gpu.sh: out=$OUT_DIR python=$PY layers=$LAYERS steps=$STEPS budget=${BUDGET}s dry_run=$DRY wheels=${WHEELS:-none}${SITE:+ (installed in $SITE)}"
export -f env_report
export PY
step env 60 bash -c env_report
[ -f "$OUT_DIR/env.log" ] && cat "$OUT_DIR/env.log" >> "$SUMMARY" && rm -f "$OUT_DIR/env.log"  # one file fewer
# most GPU tests run a `lit-lora fit` of their own (30-60 s): six at a time where pytest-xdist is installed
# worksteal: a worker that finishes early takes tests queued on a busy one (load hands out chunks in advance)
PARALLEL=$("$PY" -c 'import xdist' 2> /dev/null && echo "-n 6 --dist worksteal")
[ -n "$PARALLEL" ] || note "pytest-xdist is missing: the gpu tests run one at a time and may not finish" \
  "(--wheels .whl brings it)"
# without pytest-timeout, `--timeout` is a usage error that would run no gpu test at all: the step's cap alone then
PER_TEST=$("$PY" -c 'import pytest_timeout' 2> /dev/null && echo "--timeout 150")
[ -n "$PER_TEST" ] || note "pytest-timeout is missing: no per-test timeout, only the step's (--wheels .whl brings it)"
if [ "$DRY" -eq 1 ]; then
  note "dry run: would run: $PY -m pytest -m gpu -v -rA ${PER_TEST:-} ${PARALLEL:-} --junitxml=$OUT_DIR/pytest_gpu.xml"
  note "dry run: would run: $PY bench/generation.py --device cuda --repeats 1 --batch-sizes 64 --per-row-prompts 16"
  step throughput 300 "$PY" bench/gpu_throughput.py --dry-run --out "$OUT_DIR" --layers "$LAYERS" --steps "$STEPS"
else
  LIT_LORA_REQUIRE_CUDA=1 step pytest_gpu 200 "$PY" -m pytest -m gpu -v -rA $PER_TEST --durations 10 -p no:cacheprovider $PARALLEL \
    --junitxml="$OUT_DIR/pytest_gpu.xml"
  step generation 80 "$PY" bench/generation.py --device cuda --repeats 1 --batch-sizes 64 --per-row-prompts 16 \
    --json-out "$OUT_DIR/generation.json"
  remaining=$(left)
  step throughput "$remaining" "$PY" bench/gpu_throughput.py --out "$OUT_DIR" --layers "$LAYERS" --steps "$STEPS" \
    --budget-s $(( remaining - 40 ))
fi
# only a table this run wrote: one left in the folder by an earlier run is not this run's numbers
if [ -f "$OUT_DIR/gpu_throughput.md" ] && [ "$(stat -c %Y "$OUT_DIR/gpu_throughput.md")" -ge "$RUN_EPOCH" ]; then
  cat "$OUT_DIR/gpu_throughput.md"
elif [ -f "$OUT_DIR/gpu_throughput.md" ]; then
  note "WARNING: $OUT_DIR/gpu_throughput.md is from an earlier run (this one wrote none): not printed"
fi
files=$(find "$OUT_DIR" -type f | wc -l)
[ "$files" -le 8 ] || note "WARNING: $files files in $OUT_DIR; a lent machine's run returns at most 8"
note "done in $(( SECONDS - START )) s: $FAILURES step(s) failed; logs and results in $OUT_DIR"
[ "$FAILURES" -eq 0 ]
