# The two set-up commands of the README:
#   make demo   install into .venv/, then fine-tune the demo config on the CPU (a few minutes)
#   make test   install into .venv/, then run the test suite (CPU tests + the SLURM suite when slurm is available)
# Both install the locked versions (requirements/cpu.lock) into VENV (default .venv, reused when it
# exists); `make test VENV=$CONDA_PREFIX` installs into an environment you manage instead.
# Development:
#   make test-latest   a fresh .venv-latest/ with the newest releases pyproject.toml allows, then the suite
#   make lock          re-resolve requirements/cpu.lock (newest allowed releases) and the README's version table
VENV ?= .venv
export VENV
BIN = $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast test-latest lock

install:
	bash scripts/install.sh

demo: install
	$(BIN)/lit-lora fit --config configs/demo.yaml

test: install
	PY=$(BIN)/python bash scripts/test.sh

test-fast:
	LIT_LORA_SKIP_SLURM=1 PY=$(BIN)/python bash scripts/test.sh -m "not slurm and not slow"

test-latest:
	bash scripts/test_latest.sh

lock:
	bash scripts/lock.sh
