"""FSDP (``configs/strategies/fsdp.yaml``): the per-layer auto-wrap policy, and ``lit-lora fit`` under it.

FSDP itself runs here on the CPU (gloo): the policy must produce one FSDP unit per decoder layer of a
peft-wrapped tiny model, forward / backward must work through those units, and the root unit's frozen
weights must stay registered parameters after a backward on one rank (``cluster/fsdp_units.py``).

``lit-lora fit`` with the fragment trains LoRA and QLoRA a few steps, validates with generated answers,
checkpoints and saves a whole adapter, and a resume from a checkpoint repeats the whole run's losses, on

* ``cpu-1`` / ``cpu-2``: one / two CPU ranks through ``tests/workers/cpu_as_cuda.py`` (Lightning's FSDPStrategy
  refuses a CPU accelerator; the worker presents CPU ranks as CUDA devices). One rank is FSDP's ``NO_SHARD``,
  two shard every unit: the two cases where FSDP left the root unit's weights unusable;
* ``cuda`` (marker ``gpu``): one GPU, the run a user makes.
"""

from __future__ import annotations

import json
from typing import Union

import pytest
import torch
import yaml
from harness import (CONFIGS, DEMO, adapter_tensors, assert_complete_lora_adapter, metrics_dir, read_losses,
                     run_cli, run_cli_subprocess, validation_rows, version_dir)

from lit_lora.adapters import LoRA
from lit_lora.cluster.sharding import DecoderLayerWrapPolicy, layer_classes
from lit_lora.models import CausalLMModule

FSDP_YAML = CONFIGS / "strategies" / "fsdp.yaml"
DECODER_LAYER = {"llama": "LlamaDecoderLayer", "gemma": "GemmaDecoderLayer"}


def lora_module(model_dir: str) -> CausalLMModule:
    module = CausalLMModule(model_dir, adapter=LoRA(r=4, alpha=8, dropout=0.0))
    module.configure_model()
    return module


def test_fragment_parses_with_the_cli_and_builds_the_policy(capsys):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy

    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", DEMO, "--config", str(FSDP_YAML), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    strategy = yaml.safe_load(printed[printed.index("# lightning.pytorch"):])["trainer"]["strategy"]
    assert strategy["init_args"]["auto_wrap_policy"]["class_path"] == "lit_lora.cluster.sharding.DecoderLayerWrapPolicy"

    parser = ArgumentParser()  # the Trainer's strategy argument, instantiated as the CLI does
    parser.add_argument("--strategy", type=Union[str, Strategy])
    built = parser.instantiate_classes(parser.parse_object({"strategy": strategy})).strategy
    assert isinstance(built, FSDPStrategy)
    assert isinstance(built.kwargs["auto_wrap_policy"], DecoderLayerWrapPolicy)
    assert built.kwargs["use_orig_params"] is True  # frozen base + trainable LoRA in one unit


@pytest.mark.parametrize("arch", sorted(DECODER_LAYER))
def test_policy_picks_the_decoder_layer_class(tiny_model, arch):
    module = lora_module(tiny_model(arch))
    assert {c.__name__ for c in layer_classes(module)} == {DECODER_LAYER[arch]}
    policy = DecoderLayerWrapPolicy()
    targets = policy._run_policy(module, set(), {})
    layers = module.model.get_base_model().model.layers
    assert set(targets) == set(layers)  # every decoder layer, nothing else
    assert policy(layers[0], recurse=False) and not policy(layers[0].self_attn, recurse=False)


@pytest.mark.parametrize("arch, layer", [("roberta", "RobertaLayer"), ("t5", "T5Block")])
def test_the_policy_leaves_the_input_embeddings_in_the_root_unit(arch, layer, tiny_model):
    """RoBERTa names its embeddings block in ``_no_split_modules`` too; as a unit of its own, peft's prompt
    learning (which calls the embeddings itself) found them sharded."""
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    head = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForSequenceClassification
    model = head.from_pretrained(tiny_model(arch))
    assert {c.__name__ for c in layer_classes(model)} == {layer}


def test_a_model_without_layer_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="no layer class to wrap.*auto_wrap_policy"):
        layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_fsdp_wraps_each_decoder_layer_and_trains(tiny_model, tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    module = lora_module(tiny_model("llama"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = FSDP(module, auto_wrap_policy=DecoderLayerWrapPolicy(), use_orig_params=True,
                       device_id=torch.device("cpu"))
        units = [type(m.module).__name__ for m in wrapped.modules() if isinstance(m, FSDP)]
        assert units == ["CausalLMModule"] + ["LlamaDecoderLayer"] * len(module.model.get_base_model().model.layers)
        ids = torch.tensor([[1, 5, 6, 7, 8]])
        wrapped({"input_ids": ids, "labels": ids}).loss.backward()
        lora_grads = [p.grad for n, p in module.named_parameters() if "lora_" in n]
        assert lora_grads and all(g is not None for g in lora_grads)
        assert any(g.abs().sum() > 0 for g in lora_grads)
        assert all(p.grad is None for n, p in module.named_parameters() if "lora_" not in n)  # base stays frozen
    finally:
        dist.destroy_process_group()


def test_an_fsdp_wrapped_model_saves_its_whole_adapter(tiny_model, tmp_path, monkeypatch):
    """peft finds adapter tensors by module names and strips an FSDP wrapper only at the start of a name; with each
    decoder layer wrapped it kept nothing of the gathered state, and the saved adapter was empty."""
    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lit_lora.cluster import sharding

    module = lora_module(tiny_model("llama"))
    module.save_pretrained(tmp_path / "before")
    expected = load_file(tmp_path / "before" / "adapter_model.safetensors")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = FSDP(module, auto_wrap_policy=DecoderLayerWrapPolicy(), use_orig_params=True,
                       device_id=torch.device("cpu"))
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            full = wrapped.state_dict()  # what Lightning's FSDPStrategy gathers (sharding._fsdp_state_dict)
        state = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
        monkeypatch.setattr(sharding, "gathered_state_dict", lambda _module: state)
        module.save_pretrained(tmp_path / "after")
    finally:
        dist.destroy_process_group()
    got = load_file(tmp_path / "after" / "adapter_model.safetensors")
    assert sorted(got) == sorted(expected) and len(expected) > 0
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor)


def test_the_root_units_frozen_weights_stay_parameters_after_a_backward_on_one_rank(tiny_model, tmp_path):
    """On one rank FSDP does not shard (``NO_SHARD``) and left the root unit's frozen weights (embeddings, norm,
    LM head) as plain tensors after a backward: gone from ``named_parameters()`` and the state dict, where
    Lightning's first checkpoint save stopped. ``restore_parameters`` registers the same parameters again."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lit_lora.cluster.fsdp_units import restore_parameters, unregistered_parameters

    module = lora_module(tiny_model("llama"))
    embeddings = module.model.get_base_model().model.embed_tokens
    original = embeddings.weight
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = FSDP(module, auto_wrap_policy=DecoderLayerWrapPolicy(), use_orig_params=True,
                       device_id=torch.device("cpu"))
        ids = torch.tensor([[1, 5, 6, 7, 8]])
        for _ in range(2):  # the second forward would adopt plain tensors left by the first backward for good
            wrapped({"input_ids": ids, "labels": ids}).loss.backward()
            root = FSDP.fsdp_modules(wrapped)[0]
            missing = unregistered_parameters(root)
            assert restore_parameters(wrapped) == missing and not unregistered_parameters(root)
            assert embeddings.weight is original and "weight" in dict(embeddings.named_parameters())
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            full = wrapped.state_dict()
        root_weights = {"model.base_model.model.model.embed_tokens.weight", "model.base_model.model.lm_head.weight"}
        assert root_weights <= set(full)
        assert module.trainable_state_keys() <= set(full)  # the checkpoint keeps the adapter under these names
        assert all("_fsdp_wrapped_module" not in k for k in module.trainable_state_keys())
    finally:
        dist.destroy_process_group()


def test_models_are_built_outside_deepspeed_zero3_init(monkeypatch, tiny_model):
    """Under ZeRO-3 Lightning calls configure_model inside zero.Init; from_pretrained must see whole tensors."""
    from deepspeed.runtime.zero import partition_parameters

    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    events = []
    state = {"patched": True}  # zero.Init is active when Lightning calls configure_model

    class FakeInitContext:  # stands in for an active deepspeed.zero.Init (which needs CUDA)
        def unpatch_init_and_builtins(self):
            state["patched"] = False
            events.append("unpatched")

        def patch_init_and_builtins(self):
            state["patched"] = True
            events.append("patched")

    monkeypatch.setattr(partition_parameters, "top_level_context", FakeInitContext())
    module = CausalLMModule(tiny_model("llama"), adapter=LoRA(r=4))
    original = module.load_base_model
    module.load_base_model = lambda: (events.append("load while patched" if state["patched"] else "load"), original())[1]
    module.configure_model()
    assert events.count("load") == 1 and "load while patched" not in events, events
    assert events[-1] == "patched"  # zero.Init is restored for whatever Lightning builds next
    assert events.count("unpatched") == events.count("patched")



LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
ADAPTERS = {
    "lora": ["--model.init_args.adapter", "lit_lora.adapters.LoRA"],
    "qlora": ["--model.init_args.adapter", "lit_lora.adapters.QLoRA", "--model.init_args.dtype", "bfloat16",
              "--model.init_args.adapter.init_args.quant_storage", "bfloat16",  # FSDP: one dtype per unit
              "--model.init_args.adapter.init_args.compute_dtype", "bfloat16"],
}
ROWS = 8  # training rows: one global batch, repeated every step
RANKS = {"cpu-1": 1, "cpu-2": 2, "cuda": 1}
DEVICES = [pytest.param("cpu-1"), pytest.param("cpu-2"), pytest.param("cuda", marks=pytest.mark.gpu)]


def fsdp_fit_args(adapter: str, model_dir: str, root, device: str = "cuda") -> list[str]:
    """The run a user makes with the fragment: 4 steps on one repeated global batch of 8 rows (split over the
    ranks), a flat learning rate, gradients clipped by norm (as the reference QLoRA configs do), validating each
    step, and the base model's validation loss next to the tuned one's at the end."""
    lora = [a for k, v in LORA.items() for a in (f"--model.init_args.adapter.init_args.{k}", str(v))]
    ranks = RANKS[device]
    return [
        "fit", "--config", DEMO, "--config", str(FSDP_YAML), "--model.init_args.model_name_or_path", model_dir,
        *ADAPTERS[adapter], *lora, "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps",
        "0", "--model.init_args.optim.scheduler", "constant", "--model.init_args.evaluation.during_validation",
        "true", "--model.init_args.evaluation.max_new_tokens", "8", "--data.init_args.max_samples", str(ROWS + 2),
        "--data.init_args.val_fraction", "0.2", "--data.init_args.batch_size", str(ROWS // ranks),
        "--trainer.devices", str(ranks), "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.gradient_clip_val", "1.0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
    ]


def run_fsdp(args: list[str], device: str, cwd) -> None:
    """``lit-lora <args>`` in a fresh process: on ``cuda`` as a user runs it, on CPU ranks through the worker."""
    if device == "cuda":
        run_cli_subprocess(args, via="module", cwd=cwd)
    else:
        run_cli_subprocess(args, via="cpu_as_cuda", cwd=cwd, env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_the_gpu_runs_arguments_parse_into_fsdp(adapter, tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli([*fsdp_fit_args(adapter, tiny_model("llama"), tmp_path), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed[printed.index("# lightning.pytorch"):])
    trainer = config["trainer"]
    assert trainer["strategy"]["class_path"].endswith("FSDPStrategy") and trainer["precision"] == "bf16-true"
    assert trainer["max_steps"] == 4 and int(trainer["devices"]) == 1
    assert config["model"]["init_args"]["adapter"]["class_path"] == ADAPTERS[adapter][1]
    assert config["model"]["init_args"]["adapter"]["init_args"]["r"] == LORA["r"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_fsdp_fit_trains_validates_and_saves_a_whole_adapter(adapter, device, tiny_model, tmp_path):
    """bf16-true, as the fragment says: the loss falls on the repeated batch, each validation generates and the
    base / tuned comparison runs (both outside FSDP's forward: the root unit's embeddings gathered), the
    checkpoint holds every trainable weight, and the adapter gathered from FSDP's units is complete and
    loadable."""
    import math

    model_dir = tiny_model("llama")
    run_fsdp(fsdp_fit_args(adapter, model_dir, tmp_path / "run", device), device, cwd=tmp_path)
    run_dir = metrics_dir(tmp_path / "run")
    losses = [loss for _, loss in sorted(read_losses(run_dir).items())]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    validations = validation_rows(run_dir)
    assert len(validations) == 4 and all(math.isfinite(r["val_loss"]) for r in validations), validations
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 2  # both validation rows answered
    before_after = json.loads((run_dir / "before_after.json").read_text())
    base, tuned = before_after["base_val_loss"], before_after["tuned_val_loss"]
    assert math.isfinite(base) and tuned < base, before_after
    assert_complete_lora_adapter(run_dir / "adapter", model_dir, tmp_path / "reference", LORA)
    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    lora_tensors = {k for k in saved["state_dict"] if ".lora_" in k}
    assert len(lora_tensors) == len(adapter_tensors(run_dir / "adapter")) > 0, sorted(saved["state_dict"])[:4]
    assert set(saved["state_dict"]) == set(saved["lit_lora"]["trainable_keys"])


@pytest.mark.parametrize("device", [pytest.param("cpu-2"), pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fsdp_checkpoint_resumes_to_the_losses_of_the_whole_run(device, tiny_model, tmp_path):
    """A run resumed (``--ckpt_path``) from its step-2 FSDP checkpoint repeats steps 3-4: the adapter and Adam's
    moments come back (a checkpoint that kept no weights resumed from the initial adapter without a word)."""
    model_dir = tiny_model("llama")
    every = ["--checkpoint.dirpath", str(tmp_path / "checkpoints"), "--checkpoint.filename", "{step}",
             "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"]
    run_fsdp([*fsdp_fit_args("lora", model_dir, tmp_path / "whole", device), *every], device, cwd=tmp_path)
    whole = read_losses(metrics_dir(tmp_path / "whole"))
    run_fsdp([*fsdp_fit_args("lora", model_dir, tmp_path / "resumed", device), "--ckpt_path",
              str(tmp_path / "checkpoints" / "step=2.ckpt")], device, cwd=tmp_path)
    resumed = read_losses(metrics_dir(tmp_path / "resumed"))
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-3), (step, resumed, whole)


# Reference experiments whose model or method meets FSDP differently, as their tiny twins: a prompt encoder in the
# root unit that peft runs to save the prompt (p-tuning) and RoBERTa's embeddings block, which its
# _no_split_modules names but which must stay in the root unit; an encoder-decoder; a QLoRA classifier clipping
# its gradients by norm. FSDP checkpoints torch's AdamW states only (the configs' bitsandbytes optimizer is refused).
REFERENCE_RUNS = {
    "nli/roberta_large_ptuning_multinli.yaml": ("roberta", "multinli_train.jsonl", []),
    "code/codet5_base_lora_python_codes.yaml": ("t5", "python_codes_25k.jsonl", []),
    "nli/llama3_8b_qlora_classifier_multinli.yaml": ("llama", "multinli_train.jsonl", [
        "--model.init_args.dtype", "bfloat16", "--model.init_args.adapter.init_args.quant_storage", "bfloat16",
        "--model.init_args.adapter.init_args.compute_dtype", "bfloat16", "--model.init_args.optim.name", "adamw"]),
}


@pytest.mark.parametrize("config", sorted(REFERENCE_RUNS))
def test_reference_configs_fit_under_fsdp_on_two_ranks(config, tiny_model, tmp_path):
    from safetensors.torch import load_file

    arch, sample, extra = REFERENCE_RUNS[config]
    run_fsdp(["fit", "--config", str(CONFIGS / config), "--config", str(FSDP_YAML),
              "--model.init_args.model_name_or_path", tiny_model(arch), "--data.init_args.source", sample, *extra,
              "--trainer.devices", "2", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
              "--data.init_args.max_eval_samples", "4", "--trainer.default_root_dir", str(tmp_path / "run")],
             "cpu-2", cwd=tmp_path)
    run_dir = version_dir(tmp_path / "run")
    assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == 2
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 and torch.isfinite(t.float()).all() for t in saved.values())
    last = sorted((run_dir / "checkpoints").glob("*.ckpt"))[-1]
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] and set(checkpoint["state_dict"]) == set(checkpoint["lit_lora"]["trainable_keys"])
