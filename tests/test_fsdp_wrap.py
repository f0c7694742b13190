"""FSDP's per-layer auto-wrap policy (``configs/strategies/fsdp.yaml``): parsed by the CLI, resolved per model.

FSDP itself runs here on the CPU (one gloo process): the policy must produce one FSDP unit per
decoder layer of a peft-wrapped tiny model, and forward / backward must work through those units.
"""

from __future__ import annotations

from typing import Union

import pytest
import torch
import yaml
from harness import CONFIGS, DEMO, run_cli

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
