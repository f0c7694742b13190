"""Real DeepSpeed ZeRO-2 / ZeRO-3 engines on CPU (2 ranks, gloo) around lit-lora's model code.

``tests/test_deepspeed_strategy.py`` runs ``lit-lora fit`` with Lightning's DeepSpeedStrategy end to
end; here ``tests/workers/zero_cpu.py`` drives the engine directly, as the strategy does, so that the
tests can look inside it and compare with runs DeepSpeed never saw. They check, on any machine:

* a model built whole inside ``deepspeed.zero.Init`` (``sharding.outside_zero3_init``: the path of a
  quantized base) is partitioned by the engine;
* the adapter ``save_pretrained`` writes under ZeRO-3 is complete (every tensor of an unsharded
  adapter, none empty, loadable by peft), where rank 0's shards saved as they are would be empty;
* the compatibility rules for QLoRA under DeepSpeed (``lit_lora.compatibility``) match what the engine
  really does: accepted combinations train on the same model, refused ones crash or train a wrong one;
* evaluation by generation finishes when ranks' answers end at different steps (every ZeRO-3 forward
  is a collective: without ``synced_gpus`` the ranks' collectives mismatch);
* a checkpoint written the way the strategy writes it (``exclude_frozen_parameters``, renamed into
  place by ``checkpoint_io.AtomicDirectorySave``) resumes in a fresh engine to the same losses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import deepspeed_on_cpu_env, import_worker, run_ranks
from safetensors.torch import load_file

from lit_lora.compatibility import IncompatibleConfig, Setup, check

ACCEPTED = {  # id -> worker spec (model and out filled in per test)
    "zero3-lora": dict(stage=3, adapter="lora"),
    "zero3-qlora4-bf16-storage": dict(stage=3, adapter="qlora", dtype="bfloat16", quant_storage="bfloat16", bf16=True),
    "zero3-qlora4-uint8-storage": dict(stage=3, adapter="qlora", dtype="float32", bf16=True),
    "zero3-qlora8": dict(stage=3, adapter="qlora", bits=8, dtype="bfloat16", bf16=True),
}
REFUSED = {  # id -> (worker spec, what the engine does with it)
    "zero3-qlora4-fp16-storage-bf16": (dict(stage=3, adapter="qlora", dtype="bfloat16", quant_storage="float16",
                                            bf16=True), "wrong model"),
    "zero2-qlora4-fp32-storage-bf16": (dict(stage=2, adapter="qlora", dtype="float32", quant_storage="float32",
                                            bf16=True), "crash"),
}


def setup_of(spec: dict) -> Setup:
    """The compatibility ``Setup`` of a worker spec, as the CLI would read it from YAML."""
    return Setup(method=spec["adapter"], bits=spec.get("bits", 4) if spec["adapter"] == "qlora" else None,
                 quant_storage=spec.get("quant_storage"), model_dtype=spec.get("dtype", "float32"),
                 strategy="deepspeed", zero_stage=spec["stage"], accelerator="gpu", cuda_available=True,
                 precision="bf16-mixed" if spec.get("bf16") else "32-true")


@pytest.fixture(scope="module")
def run_zero(tiny_model, torch_extensions_dir):
    """``run_zero(spec, out)`` -> the finished ``torchrun`` process of 2 CPU ranks (``tests/workers/zero_cpu.py``)."""
    env = deepspeed_on_cpu_env(torch_extensions_dir)
    model = tiny_model("llama")

    def run(spec: dict, out: Path) -> subprocess.CompletedProcess:
        full = {**spec, "model": model, "out": str(out)}
        return run_ranks("zero_cpu", json.dumps(full), ranks=2, env=env, timeout=300)

    return run


def unsharded_adapter_shapes(model: str, spec: dict) -> dict[str, tuple]:
    """Key -> shape of the adapter the same configuration saves without DeepSpeed."""
    from peft import get_peft_model_state_dict

    module = import_worker("zero_cpu").build_module({**spec, "model": model})
    module.configure_model()
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(module.model).items()}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_combination_trains_and_saves_a_complete_adapter(case, run_zero, tiny_model, tmp_path):
    spec = ACCEPTED[case]
    check(setup_of(spec))  # the rules accept it
    result = run_zero(spec, tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    facts = json.loads((tmp_path / "result.json").read_text())
    assert facts["world_size"] == 2
    assert not facts["built_partitioned"], "the model was partitioned while being built (zero.Init not lifted)"
    assert facts["engine_partitioned"] == (spec["stage"] == 3)
    first, *_, last = facts["losses"]
    assert first == pytest.approx(facts["reference_loss"], rel=1e-2), "DeepSpeed changed the model it was given"
    assert last < first - 0.5, facts["losses"]

    saved = load_file(tmp_path / "adapter_model.safetensors")
    expected = unsharded_adapter_shapes(tiny_model("llama"), spec)
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected
    assert all(v.numel() > 0 for v in saved.values())
    ungathered = load_file(tmp_path / "ungathered" / "adapter_model.safetensors")
    assert all(v.numel() == 0 for v in ungathered.values())  # what the gather protects against

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    loaded = PeftModel.from_pretrained(base, str(tmp_path))
    lora_b = next(p for n, p in loaded.named_parameters() if "lora_B" in n)
    assert lora_b.abs().sum() > 0  # trained (LoRA B starts at zero), not a fresh adapter


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_combination_really_fails_under_deepspeed(case, run_zero, tmp_path):
    spec, failure = REFUSED[case]
    with pytest.raises(IncompatibleConfig, match="quant_storage: bfloat16"):
        check(setup_of(spec))
    result = run_zero(spec, tmp_path)
    if failure == "crash":
        assert result.returncode != 0
        assert "is invalid for input of size" in result.stderr  # the cast packed weights no longer reshape
    else:  # trains, silently, on a model whose 4-bit weights were rewritten
        assert result.returncode == 0, result.stderr[-5000:]
        facts = json.loads((tmp_path / "result.json").read_text())
        assert facts["losses"][0] != pytest.approx(facts["reference_loss"], rel=1e-2)


RESUMED = {"zero3-lora": ACCEPTED["zero3-lora"],
           "zero2-qlora4-bf16-storage": {**ACCEPTED["zero3-qlora4-bf16-storage"], "stage": 2}}


@pytest.mark.parametrize("case", sorted(RESUMED))
def test_checkpoint_and_resume_in_a_fresh_engine_equals_an_uninterrupted_run(case, run_zero, tmp_path):
    """Saved as Lightning's DeepSpeedStrategy saves (frozen weights excluded, written atomically), loaded non-strictly."""
    spec = {**RESUMED[case], "steps": 4}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out, extra in ((whole, {}), (resumed, {"resume_after": 2})):
        result = run_zero({**spec, **extra}, out)
        assert result.returncode == 0, result.stderr[-5000:]
    expected = json.loads((whole / "result.json").read_text())["losses"]
    got = json.loads((resumed / "result.json").read_text())["losses"]
    assert got == pytest.approx(expected, rel=1e-5)
    assert sorted(p.name for p in resumed.iterdir() if "ckpt" in p.name or p.name.startswith(".")) == \
        ["hpc_ckpt_1.ckpt"]  # renamed into place, no partial directory left
    assert (resumed / "hpc_ckpt_1.ckpt" / "latest").read_text().strip() == "checkpoint"


def test_generation_under_zero3_finishes_when_ranks_stop_at_different_steps(run_zero, tmp_path):
    result = run_zero({**ACCEPTED["zero3-lora"], "generate": True}, tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    per_rank = json.loads((tmp_path / "result.json").read_text())["generated_lengths"]  # [(limit, hit it)] a rank
    assert per_rank[0][0][0] < per_rank[1][0][0]
    assert any(hit for _, hit in per_rank[1])  # rank 1 kept generating after rank 0 had stopped
