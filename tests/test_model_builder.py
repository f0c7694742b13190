"""One model builder (``lit_lora.models.builder``) for training and ``estimate``; adapters describe themselves
with an ``AdapterSpec`` that the compatibility rules and the estimate read.

    python -m pytest tests/test_model_builder.py

A tiny model is built twice from the same settings: by ``configure_model`` (real weights, what ``fit`` runs)
and by ``estimate.build`` (the meta device). Both must have the same parameters (names, shapes, dtypes) and the
same trainable set, for LoRA, QLoRA, prompt tuning, full fine-tuning and a classifier head; and both must go
through the builder's three steps.
"""

from __future__ import annotations

import pytest
import torch

from lit_lora.adapters import Adapter, AdapterSpec, FullFineTuning, LoRA, NoAdapter, PromptTuning, PTuning, QLoRA
from lit_lora.compatibility import IncompatibleConfig, adapter_spec, check_config, from_config
from lit_lora.models import builder

LABELS = ["entailment", "neutral", "contradiction"]
CASES = {  # name -> (tiny architecture, adapter factory)
    "lora": ("llama", lambda: LoRA(r=4, alpha=8)),
    "qlora": ("llama", lambda: QLoRA(r=4, alpha=8, compute_dtype="float32")),
    "prompt_tuning": ("llama", lambda: PromptTuning(num_virtual_tokens=4)),
    "full": ("llama", FullFineTuning),
    "seq2seq_lora": ("t5", lambda: LoRA(r=4, alpha=8)),
    "classifier_lora": ("roberta", lambda: LoRA(r=4, alpha=8, target_modules=["query", "value"])),
    "classifier_p_tuning": ("roberta", lambda: PTuning(num_virtual_tokens=4, encoder_hidden_size=16)),
}


def module_for(arch: str, path: str, adapter):
    from lit_lora.models import CausalLMModule, Seq2SeqModule, SequenceClassifierModule

    if arch == "t5":
        return Seq2SeqModule(path, adapter=adapter)
    if arch == "roberta":
        return SequenceClassifierModule(path, adapter=adapter, label_names=LABELS)
    return CausalLMModule(path, adapter=adapter)


def parameters(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: (tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_and_estimate_build_the_same_model(tiny_model, case):
    from lit_lora.estimate import build

    arch, adapter = CASES[case]
    path = tiny_model(arch)
    trained = module_for(arch, path, adapter())
    trained.configure_model()
    estimated = module_for(arch, path, adapter())
    built = build(estimated)
    assert all(p.device.type == "meta" for p in built.model.parameters())
    assert parameters(built.model) == parameters(trained.model)
    trainable = {n for n, (_, _, grad) in parameters(trained.model).items() if grad}
    assert trainable and (built.trainable, built.total) == (trained.parameter_counts["trainable_params"],
                                                            trained.parameter_counts["total_params"])
    if arch == "roberta":  # the head: named from the architecture, trained in full, never quantized
        assert trained.head_modules == estimated.head_modules == ["classifier"]
        assert any(".classifier." in n for n in trainable)


def test_both_paths_run_the_builders_three_steps(tiny_model, monkeypatch):
    from lit_lora.estimate import build
    from lit_lora.models import CausalLMModule

    calls = []
    for step in ("architecture", "load_base", "adapt"):
        original = getattr(builder, step)

        def spy(module, *args, _step=step, _original=original, **kwargs):
            meta = kwargs.get("meta", args[-1] if args and isinstance(args[-1], bool) else False)
            calls.append((_step, meta))
            return _original(module, *args, **kwargs)

        monkeypatch.setattr(builder, step, spy)
    path = tiny_model("llama")
    CausalLMModule(path, adapter=QLoRA(r=4, compute_dtype="float32")).configure_model()
    assert calls == [("architecture", False), ("load_base", False), ("adapt", False)]
    calls.clear()
    build(CausalLMModule(path, adapter=QLoRA(r=4, compute_dtype="float32")))
    assert calls == [("architecture", True), ("load_base", True), ("adapt", True)]


# ---- the adapter spec ------------------------------------------------------------------------------------------
def test_each_adapter_describes_itself():
    assert QLoRA(bits=4, quant_storage="bfloat16", compute_dtype="float16", double_quant=False).spec() == AdapterSpec(
        method="qlora", bits=4, storage_dtype="bfloat16", compute_dtype="float16", double_quant=False,
        kbit_checkpointing=True, mergeable=True)
    assert QLoRA(bits=8).spec().quantized and not LoRA().spec().quantized
    assert LoRA().spec().mergeable and not any(a.spec().mergeable for a in (FullFineTuning(), NoAdapter(),
                                                                              PromptTuning(num_virtual_tokens=7)))
    assert FullFineTuning().spec() == AdapterSpec(method="full") and NoAdapter().spec() == AdapterSpec(method="none")
    assert PromptTuning(num_virtual_tokens=7).spec().virtual_tokens == 7
    with pytest.raises(Exception):  # frozen
        LoRA().spec().bits = 4
    lora = LoRA(modules_to_save=["extra"])
    assert lora.with_trained_modules(["classifier"]).modules_to_save == ["classifier", "extra"]
    assert lora.modules_to_save == ["extra"]  # a copy: the configured adapter is left as it was
    full = FullFineTuning()
    assert full.with_trained_modules(["classifier"]) is full


class Packed4bit(QLoRA):
    """A class name the old compatibility check did not know: the spec says what it is."""


class Custom4bit(Adapter):
    """Not a QLoRA at all: a quantized base declared by the spec alone."""

    method = "custom"

    def __init__(self, storage: str = "float16"):
        self.storage = storage

    def spec(self) -> AdapterSpec:
        return AdapterSpec(method=self.method, bits=4, storage_dtype=self.storage)


def zero3_config(class_path: str, init_args: dict) -> dict:
    return {"model": {"init_args": {"adapter": {"class_path": class_path, "init_args": init_args}}},
            "trainer": {"accelerator": "gpu", "precision": "bf16-mixed",
                        "strategy": {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy",
                                     "init_args": {"stage": 3}}}}


def test_compatibility_reads_the_spec_not_the_class_name():
    setup = from_config(zero3_config(f"{__name__}.Packed4bit", {"quant_storage": "float16"}), cuda_available=True)
    assert (setup.method, setup.bits, setup.quant_storage) == ("qlora", 4, "float16")
    with pytest.raises(IncompatibleConfig, match="quant_storage: bfloat16"):
        check_config(zero3_config(f"{__name__}.Custom4bit", {"storage": "float16"}))
    assert from_config(zero3_config(f"{__name__}.Custom4bit", {"storage": "bfloat16"}),
                       cuda_available=True).method == "custom"
    assert adapter_spec(None) == LoRA().spec()  # no adapter in the config: the modules' default
    assert adapter_spec(PromptTuning(num_virtual_tokens=3)).virtual_tokens == 3


def test_the_estimate_reads_the_spec(tiny_model, monkeypatch):
    from lit_lora.estimate import build, quant_bytes
    from lit_lora.memory import quant_constant_bytes
    from lit_lora.models import CausalLMModule

    module = CausalLMModule(tiny_model("llama"), adapter=QLoRA(r=4, compute_dtype="float32"))
    built = build(module)
    double = quant_bytes(built, module.adapter)
    plain = module.adapter.spec()
    monkeypatch.setattr(QLoRA, "spec", lambda self: AdapterSpec(**{**plain.__dict__, "double_quant": False}))
    single = quant_bytes(built, module.adapter)
    assert single != double and single == quant_constant_bytes(built.quantized_layers, 4, False, built.quantized_rows)


# ---- the attention a model trains with (``lit_lora.models.attention``) -----------------------------------------
def test_flash_attention_is_the_default_only_where_it_runs(tiny_model, monkeypatch):
    """On a CUDA rank with flash_attn installed, a half-precision model that names no attention gets FlashAttention 2;
    a CPU, float32, a model class without it (T5) or a named attention keep what they had."""
    import transformers.utils
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from lit_lora.models import CausalLMModule
    from lit_lora.models.attention import default_attention

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    llama = AutoConfig.from_pretrained(tiny_model("llama"))
    t5 = AutoConfig.from_pretrained(tiny_model("t5"))
    bf16 = {"dtype": torch.bfloat16, "trust_remote_code": False}
    assert default_attention(llama, AutoModelForCausalLM, bf16, "cuda") == "flash_attention_2"
    assert default_attention(llama, AutoModelForCausalLM, bf16, "cpu") is None
    assert default_attention(llama, AutoModelForCausalLM, {"dtype": torch.float32}, "cuda") is None
    assert default_attention(llama, AutoModelForCausalLM, {**bf16, "attn_implementation": "sdpa"}, "cuda") is None
    assert default_attention(llama, AutoModelForCausalLM, {**bf16, "trust_remote_code": True}, "cuda") is None
    assert default_attention(t5, AutoModelForSeq2SeqLM, bf16, "cuda") is None  # T5 has no FlashAttention 2
    qlora = {"quantization_config": QLoRA(compute_dtype="bfloat16").quantization_config()}
    assert default_attention(llama, AutoModelForCausalLM, qlora, "cuda") == "flash_attention_2"  # computes in bf16

    module = CausalLMModule(tiny_model("llama"), dtype="bfloat16")
    kwargs = module.load_kwargs()
    monkeypatch.setattr(module, "_load_device", lambda: 0)  # this rank's CUDA device
    assert builder.with_default_attention(module, tiny_model("llama"), kwargs)["attn_implementation"] == \
        "flash_attention_2"
    monkeypatch.setattr(module, "_load_device", lambda: "cpu")
    assert builder.with_default_attention(module, tiny_model("llama"), kwargs) == kwargs
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    monkeypatch.setattr(module, "_load_device", lambda: 0)
    assert "attn_implementation" not in builder.with_default_attention(module, tiny_model("llama"), kwargs)


def test_gradient_checkpointing_uses_the_current_transformers_call(tiny_model):
    """``gradient_checkpointing: true`` turns checkpointing on without transformers' deprecation warning (the old
    ``gradient_checkpointing_enable`` is removed in transformers v6)."""
    import warnings

    from lit_lora.models import CausalLMModule

    module = CausalLMModule(tiny_model("llama"), adapter=LoRA(r=4), gradient_checkpointing=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
        module.configure_model()
    assert any(getattr(layer, "gradient_checkpointing", False) for layer in module.model.modules())


@pytest.mark.parametrize("module_switch, adapter_switch, expected", [
    (None, True, True),     # QLoRA's default, as peft's prepare_model_for_kbit_training
    (False, True, False),   # the module's switch decides where it is set (peft's preparation turned it on)
    (None, False, False),   # the adapter's default off
    (True, False, True),
])
def test_qlora_checkpointing_follows_the_modules_switch_where_set(tiny_model, caplog, module_switch,
                                                                   adapter_switch, expected):
    """One switch decides: ``model.init_args.gradient_checkpointing``; unset, QLoRA's own default. The estimate
    reports what was built."""
    import logging

    from lit_lora.models import CausalLMModule
    from lit_lora.models.builder import is_checkpointing

    with caplog.at_level(logging.INFO, logger="lit_lora"):
        module = CausalLMModule(tiny_model("llama"), gradient_checkpointing=module_switch,
                                adapter=QLoRA(r=4, compute_dtype="float32", gradient_checkpointing=adapter_switch))
        module.configure_model()
    layers_on = any(getattr(layer, "gradient_checkpointing", False) for layer in module.model.modules())
    assert (layers_on, is_checkpointing(module.model)) == (expected, expected)
    said = "model.init_args.gradient_checkpointing: false turns it off" in caplog.text
    assert said == (module_switch is None and adapter_switch)
