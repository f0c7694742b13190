"""Method × strategy × quantisation rules, and the strategy fragments parsed by DeepSpeed's own config parser."""

import pytest
import yaml
from harness import CONFIGS, DEMO, run_cli

from lit_lora.compatibility import IncompatibleConfig, Setup, check, from_config, problems

STRATEGIES = CONFIGS / "strategies"
GPU = dict(accelerator="gpu", cuda_available=True)


def test_qlora_storage_must_survive_the_16bit_cast_of_deepspeed_and_fsdp():
    """Floating-point 4-bit storage other than the precision's dtype is refused (tests/test_zero_cpu.py: why)."""
    zero3 = dict(method="qlora", bits=4, strategy="deepspeed", zero_stage=3, precision="bf16-mixed", **GPU)
    with pytest.raises(IncompatibleConfig, match="quant_storage: bfloat16 \\(or unset"):
        check(Setup(**zero3, quant_storage="float16", model_dtype="bfloat16"))
    with pytest.raises(IncompatibleConfig, match="stored as float32"):
        check(Setup(**{**zero3, "zero_stage": 2}, quant_storage="float32", model_dtype="float32"))
    check(Setup(**zero3, quant_storage="bfloat16", model_dtype="bfloat16"))
    check(Setup(**zero3, model_dtype="float32"))  # default uint8 storage is never cast
    check(Setup(**{**zero3, "precision": "32-true"}, quant_storage="float32", model_dtype="float32"))
    with pytest.raises(IncompatibleConfig, match="quant_storage: float16"):
        check(Setup(**{**zero3, "precision": "16-mixed"}, quant_storage="bfloat16", model_dtype="bfloat16"))


def test_qlora_under_fsdp_needs_one_dtype_per_flat_parameter():
    fsdp = dict(method="qlora", bits=4, strategy="fsdp", precision="bf16-true", **GPU)
    with pytest.raises(IncompatibleConfig, match="storage dtype must equal the model dtype"):
        check(Setup(**fsdp, model_dtype="bfloat16"))  # uint8 storage next to bf16 weights
    found = problems(Setup(**fsdp, quant_storage="float32", model_dtype="float32"))
    assert len(found) == 1 and "quant_storage: bfloat16 and model.init_args.dtype: bfloat16" in found[0]
    check(Setup(**fsdp, quant_storage="bfloat16", model_dtype="bfloat16"))


def test_8bit_qlora_is_refused_under_fsdp_only_and_deepspeed_needs_cuda():
    assert "8-bit QLoRA" in problems(Setup(method="qlora", bits=8, strategy="fsdp", **GPU))[0]
    assert problems(Setup(method="qlora", bits=8, strategy="deepspeed", zero_stage=3, precision="bf16-mixed",
                          **GPU)) == []  # tests/test_zero_cpu.py: trains under a real ZeRO-3 engine
    assert "needs CUDA" in problems(Setup(method="lora", strategy="deepspeed", zero_stage=2, accelerator="cpu"))[0]
    assert problems(Setup(method="qlora", bits=8, strategy="ddp", accelerator="cpu")) == []


def test_dtype_aliases_name_the_same_dtype():
    check(Setup(method="qlora", bits=4, quant_storage="bf16", model_dtype="bfloat16", strategy="fsdp",
                precision="bf16-true", **GPU))


def test_fsdp_refuses_bitsandbytes_optimizers_whose_states_it_cannot_gather():
    for optimizer in ("adamw_8bit", "paged_adamw", "paged_adamw_8bit"):
        assert any("bitsandbytes optimizer" in p and "optim.name: adamw" in p
                   for p in problems(Setup(strategy="fsdp", optimizer=optimizer, cuda_available=True)))
    assert problems(Setup(strategy="fsdp", optimizer="adamw", cuda_available=True)) == []
    assert problems(Setup(strategy="deepspeed", optimizer="paged_adamw_8bit", cuda_available=True)) == []


def test_offload_refuses_bitsandbytes_optimizers():
    s = Setup(strategy="deepspeed", zero_stage=3, offload_optimizer=True, optimizer="paged_adamw_8bit", **GPU)
    assert "optim.name: adamw" in problems(s)[0]


def test_merge_is_refused_for_methods_with_no_lora_weights_before_anything_loads(tmp_path):
    assert problems(Setup(method="lora", merge=True)) == [] and problems(Setup(method="qlora", merge=True)) == []
    for method in ("full", "prompt_tuning", "p_tuning"):
        assert "drop export.merge" in problems(Setup(method=method, mergeable=False, merge=True))[0]
    with pytest.raises(IncompatibleConfig, match="full fine-tuning saves the whole model"):  # was after training
        run_cli(["fit", "--config", DEMO, "--model.init_args.adapter", "lit_lora.adapters.FullFineTuning",
                 "--export.merge", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert not any(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("fragment, family, stage, offload", [
    ("ddp", "ddp", None, False), ("fsdp", "fsdp", None, False), ("deepspeed_zero2", "deepspeed", 2, False),
    ("deepspeed_zero3", "deepspeed", 3, False), ("deepspeed_zero3_offload", "deepspeed", 3, True)])
def test_fragments_are_read_as_their_strategy(fragment, family, stage, offload):
    config = yaml.safe_load((STRATEGIES / f"{fragment}.yaml").read_text())
    s = from_config(config, cuda_available=True)
    assert (s.strategy, s.zero_stage, s.offload_optimizer) == (family, stage, offload)
    assert s.precision == config["trainer"].get("precision")


@pytest.mark.parametrize("fragment", ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"])
def test_deepspeed_fragments_pass_deepspeeds_config_parser(fragment):
    """The config Lightning hands DeepSpeed, with the batch keys Lightning adds at setup, parsed by DeepSpeed."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from lightning.pytorch.strategies import DeepSpeedStrategy

    args = yaml.safe_load((STRATEGIES / f"{fragment}.yaml").read_text())["trainer"]["strategy"]["init_args"]
    config = dict(DeepSpeedStrategy(**args).config, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == args["stage"]
    assert parsed.train_batch_size == 8
    assert (parsed.zero_config.offload_optimizer is not None) == bool(args.get("offload_optimizer"))
    assert (parsed.zero_config.offload_param is not None) == bool(args.get("offload_parameters"))


def test_cli_refuses_deepspeed_on_cpu_before_building_anything(tiny_model):
    with pytest.raises(IncompatibleConfig, match="ddp.yaml"):
        run_cli(["fit", "--config", DEMO, "--config", str(STRATEGIES / "deepspeed_zero3.yaml"),
                 "--model.init_args.model_name_or_path", tiny_model("llama")])


def deepspeed_with(config, clip=1.0) -> dict:
    strategy = {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy", "init_args": {"config": config}}
    return {"trainer": {"strategy": strategy, "accelerator": "gpu", "gradient_clip_val": clip}}


def test_a_deepspeed_config_may_not_replace_the_optimizer_schedule_or_clipping(tmp_path):
    """Lightning skips ``configure_optimizers`` when the DeepSpeed config has an optimizer or scheduler section,
    and takes its ``gradient_clipping`` over ``trainer.gradient_clip_val``: each is refused by name, from a dict
    or from the JSON file the strategy reads."""
    zero = {"zero_optimization": {"stage": 2}}
    assert problems(from_config(deepspeed_with(zero), cuda_available=True)) == []
    assert problems(from_config(deepspeed_with({**zero, "gradient_clipping": 1.0}), cuda_available=True)) == []
    found = problems(from_config(deepspeed_with({**zero, "optimizer": {"type": "AdamW"}, "scheduler": {},
                                                 "gradient_clipping": 0.5}), cuda_available=True))
    assert len(found) == 1 and "'optimizer'" in found[0] and "'scheduler'" in found[0], found
    assert "'gradient_clipping: 0.5' (trainer.gradient_clip_val is 1.0)" in found[0]
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3}, "optimizer": {"type": "Adam"}}')
    with pytest.raises(IncompatibleConfig, match="sets 'optimizer'"):
        check(from_config(deepspeed_with(str(path)), cuda_available=True))
    path.write_text('{"zero_optimization": ')
    with pytest.raises(IncompatibleConfig, match="cannot read .*ds.json as a DeepSpeed JSON config"):
        from_config(deepspeed_with(str(path)), cuda_available=True)
