"""Shared fixtures: tiny models of real architectures, built once per test session, offline.

The shared helpers (running the CLI in this process or a fresh one, on several ranks; reading metrics.csv;
tiny trainers) are ``tests/harness.py``: ``from harness import …`` (``tests/`` is on ``sys.path`` through
pyproject's ``pythonpath``). A test never imports another test module.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _verbose_switch_stays_in_its_test():
    """``lit-lora … --verbose`` run in-process sets ``LIT_LORA_VERBOSE=1`` for the process (other ranks inherit
    it); put it back after each test, so a later test does not see library output it would not see alone."""
    before = os.environ.get("LIT_LORA_VERBOSE")
    yield
    if before is None:
        os.environ.pop("LIT_LORA_VERBOSE", None)
    else:
        os.environ["LIT_LORA_VERBOSE"] = before


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("llama")`` -> path of a tiny random Llama-architecture model + BPE tokenizer (cached)."""
    from lit_lora.tiny import build_tiny_model

    built: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in built:
            built[arch] = str(build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}")))
        return built[arch]

    return make


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory) -> str:
    """A private ``TORCH_EXTENSIONS_DIR``: DeepSpeed JIT-builds a small CPU op once per test session here,
    and a fresh directory never meets a stale build lock left by a killed process."""
    return str(tmp_path_factory.mktemp("torch_extensions"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Group tests for pytest-xdist's ``--dist loadgroup`` (``scripts/test.sh``), then skip ``gpu`` tests where no
    CUDA device is present (the only hardware-based skip)."""
    import torch

    for item in items:
        item.add_marker(pytest.mark.xdist_group(_worker_group(item)))
    if torch.cuda.is_available():
        return
    if os.environ.get("LIT_LORA_REQUIRE_CUDA") == "1":  # bench/gpu.sh: a GPU run whose tests all skip is no run
        raise pytest.UsageError("LIT_LORA_REQUIRE_CUDA=1, but torch sees no CUDA device (torch "
                                f"{torch.__version__}): every gpu test would be skipped")
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _worker_group(item) -> str:
    """Which tests one pytest-xdist worker runs one after another: a test file's tests together (its module
    fixtures are built once), every ``slurm`` test together (one submitter keeps the small cluster's queue
    short) and every DeepSpeed test together (DeepSpeed's CPU op is JIT-built once per worker)."""
    if item.get_closest_marker("slurm"):
        return "slurm"
    if "torch_extensions_dir" in item.fixturenames:
        return "deepspeed"
    return item.nodeid.split("::")[0]
