# The two set-up commands of the README:
#   make demo   install, then fine-tune the demo config on the CPU (a few minutes)
#   make test   install, then run the test suite (CPU tests + the SLURM suite when slurm is available)
PY ?= python3
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast

install:
	bash scripts/install.sh

demo: install
	lit-lora fit --config configs/demo.yaml

test: install
	bash scripts/test.sh

test-fast:
	$(PY) -m pytest -q -m "not slurm and not slow"
