#!/bin/bash
# Shared body of the sbatch scripts: run directory by job id, then `srun lit-lora fit`.
#   (called by slurm/*.sbatch; not submitted directly)
# Environment knobs: LIT_LORA_STRATEGY (a configs/strategies/*.yaml fragment), LIT_LORA_RUNS (default runs),
# LIT_LORA_NUM_NODES / LIT_LORA_DEVICES (default: SLURM_NNODES / SLURM_NTASKS_PER_NODE),
# MASTER_ADDR / MASTER_PORT (default: the first node of the allocation, a port derived from the job id).
# Job arrays over a sweep (`lit-lora sweep … --slurm` submits `sbatch --array=… <script> runs/<sweep>/points.txt`):
# with SLURM_ARRAY_TASK_ID set and a *.txt list instead of a config, task N runs the config on line N + 1 of
# the list in that config's directory (runs/<sweep>/<point>/: log.txt, and sweep_status.json with the exit status).
set -euo pipefail
if [ $# -ge 1 ] && [ ! -f "$1" ]; then
  echo "[lit-lora] no config file '$1' (from $PWD); sbatch from the lit-lora checkout's root with a path relative to it" >&2
fi
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: sbatch slurm/<script>.sbatch configs/<group>/<exp>.yaml [lit-lora fit arguments …]" >&2
  echo "       sbatch --array=0-N slurm/<script>.sbatch runs/<sweep>/points.txt   (lit-lora sweep --slurm)" >&2
  exit 2
fi
CONFIG=$1; shift
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [[ "$CONFIG" == *.txt ]]; then
  POINTS=$CONFIG
  CONFIG=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$POINTS")
  if [ -z "$CONFIG" ] || [ ! -f "$CONFIG" ]; then
    echo "[lit-lora] array task $SLURM_ARRAY_TASK_ID: line $((SLURM_ARRAY_TASK_ID + 1)) of $POINTS names no config file: '$CONFIG'" >&2
    exit 2
  fi
  RUN_DIR=$(dirname "$CONFIG")
  LOG=$RUN_DIR/log.txt
  TASK="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  DIGEST=$(sha256sum "$CONFIG" | cut -d' ' -f1)  # the settings this task runs: a stopped point resumes only with them
  write_status() {  # runs/<sweep>/<point>/sweep_status.json, read by `lit-lora sweep report`
    printf '{"runner": "slurm", "job": "%s", "restart": %s, "host": "%s", "config_sha256": "%s", %s}\n' \
      "$TASK" "${SLURM_RESTART_COUNT:-0}" "$(hostname -s)" "$DIGEST" "$1" > "$RUN_DIR/sweep_status.json"
  }
  write_status "\"started\": \"$(date -Iseconds)\""
  # the exit status (0 also after a preemption save: the requeued task starts by rewriting the file)
  trap 'rc=$?; write_status "\"returncode\": $rc, \"ended\": \"$(date -Iseconds)\""' EXIT
else
  EXP=$(basename "$CONFIG" .yaml)
  RUN_DIR=${LIT_LORA_RUNS:-runs}/$EXP/${SLURM_JOB_ID}
  LOG=$RUN_DIR/slurm.out
fi
mkdir -p "$RUN_DIR"
# the job log, also after a requeue (--open-mode=append); tee ignores scancel's SIGTERM so the preemption save's
# last lines still reach the log (it ends when the script's output closes)
exec > >(trap '' TERM INT; exec tee -a "$LOG") 2>&1

export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export TOKENIZERS_PARALLELISM=false
STRATEGY_ARGS=()
if [ -n "${LIT_LORA_STRATEGY:-}" ]; then STRATEGY_ARGS=(--config "$LIT_LORA_STRATEGY"); fi
# the user's --config files go before the keys set here (a later --config would override them, the run directory
# announced below included); their other arguments after, as given
USER_CONFIGS=(); USER_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config|-c) USER_CONFIGS+=("$1" "${2:-}"); shift $(( $# > 1 ? 2 : 1 ));;
    --config=*) USER_CONFIGS+=("$1"); shift;;
    *) USER_ARGS+=("$1"); shift;;
  esac
done

echo "[lit-lora] job ${TASK:-$SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES} node(s) × ${SLURM_NTASKS_PER_NODE} task(s), run dir $RUN_DIR"
# trainer.num_nodes / devices follow the allocation; lit-lora checks them against SLURM_NNODES /
# SLURM_NTASKS_PER_NODE on every rank before building anything (a mismatch is an error, not a hang).
srun --kill-on-bad-exit=1 lit-lora fit --config "$CONFIG" "${STRATEGY_ARGS[@]}" "${USER_CONFIGS[@]}" \
  --trainer.num_nodes "${LIT_LORA_NUM_NODES:-$SLURM_NNODES}" \
  --trainer.devices "${LIT_LORA_DEVICES:-$SLURM_NTASKS_PER_NODE}" \
  --trainer.default_root_dir "$RUN_DIR" \
  "${USER_ARGS[@]}"
