"""Full, LoRA and QLoRA each lower the loss of tiny real-architecture models on a tiny overfit set."""

import json

import pytest
from harness import overfit

from lit_lora.adapters import FullFineTuning, LoRA, PrefixTuning, QLoRA
from lit_lora.models import CausalLMModule


@pytest.mark.parametrize("adapter, lr", [(FullFineTuning(), 3e-3), (LoRA(r=8, alpha=16, dropout=0.0), 1e-2),
                                         (QLoRA(r=8, alpha=16, dropout=0.0, compute_dtype="float32"), 1e-2),
                                         (PrefixTuning(num_virtual_tokens=8), 3e-2)],
                         ids=["full", "lora", "qlora-nf4-double-quant", "prefix-tuning"])
def test_each_method_lowers_the_loss_on_llama(tiny_model, adapter, lr):
    before, after, module = overfit(tiny_model("llama"), adapter, lr=lr)
    assert after < before - 1.0, (before, after)
    if adapter.method == "qlora":
        import bitsandbytes as bnb

        layer = module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        assert isinstance(layer, bnb.nn.Linear4bit)
        assert layer.weight.quant_type == "nf4" and layer.weight.compress_statistics  # double quant


@pytest.mark.parametrize("arch", ["gemma", "phi", "falcon"])
def test_lora_lowers_the_loss_on_other_architectures(tiny_model, arch):
    before, after, _ = overfit(tiny_model(arch), LoRA(r=8, alpha=16, dropout=0.0))
    assert after < before - 1.0, (arch, before, after)


def test_qlora_counts_parameters_like_peft(tiny_model):
    _, _, module = overfit(tiny_model("llama"), QLoRA(compute_dtype="float32"), steps=1)
    trainable, total = module.model.get_nb_trainable_parameters()
    assert module.parameter_counts["trainable_params"] == trainable
    assert module.parameter_counts["total_params"] == total
    from transformers import AutoModelForCausalLM

    plain = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model("llama")).parameters())
    assert total == plain + trainable  # 4-bit weights counted as their real number of parameters


def test_unknown_target_module_is_an_error_with_close_names(tiny_model):
    module = CausalLMModule(tiny_model("llama"), adapter=LoRA(target_modules=["q_proj", "v_prj"]))
    with pytest.raises(ValueError, match=r"'v_prj' matches no module.*v_proj"):
        module.configure_model()


def test_qlora_really_quantizes_falcon_linear_layers(tiny_model):
    """transformers converts only exact nn.Linear; Falcon's FalconLinear must be quantized too."""
    import bitsandbytes as bnb

    before, after, module = overfit(tiny_model("falcon"), QLoRA(r=8, alpha=16, dropout=0.0, compute_dtype="float32"))
    quantized = [m for m in module.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 4 * 2  # query_key_value, dense, dense_h_to_4h, dense_4h_to_h in each of 2 layers
    assert after < before - 1.0


def test_no_forward_that_only_scores_builds_a_kv_cache(tiny_model, tmp_path, monkeypatch):
    """Training steps, validation and the baseline evaluation pass ``use_cache=False``: a KV cache is built for
    generation and only costs memory in a forward that scores. Generation itself keeps its cache."""
    from harness import demo_cli, fit
    from transformers import GenerationMixin, LlamaForCausalLM

    calls, generating = [], []
    forward, generate = LlamaForCausalLM.forward, GenerationMixin.generate

    def recording_forward(self, *args, **kwargs):
        if not generating:
            calls.append((self.training, kwargs.get("use_cache", "not given")))
        return forward(self, *args, **kwargs)

    def marked_generate(self, *args, **kwargs):
        generating.append(True)
        try:
            return generate(self, *args, **kwargs)
        finally:
            generating.pop()

    monkeypatch.setattr(LlamaForCausalLM, "forward", recording_forward)
    monkeypatch.setattr(GenerationMixin, "generate", marked_generate)
    cli = demo_cli(tiny_model("llama"), tmp_path, "--data.init_args.max_samples", "24",
                   "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1")
    fit(cli)
    assert {training for training, _ in calls} == {True, False}, calls  # training steps, baseline and validation
    assert {use_cache for _, use_cache in calls} == {False}, calls


def test_the_base_scored_after_training_is_the_base_training_started_from(tiny_model, tmp_path):
    """An adapter's base is scored after fit (adapter disabled), so that no validation pass delays step 1; it must
    be the untouched base: the same figure after 1 step as after 6, while the tuned figure moves."""
    from harness import demo_cli, fit, version_dir

    def before_after(steps: int) -> dict:
        root = tmp_path / f"steps{steps}"
        cli = demo_cli(tiny_model("llama"), root, "--data.init_args.max_samples", "24", "--trainer.max_steps",
                       str(steps), "--trainer.val_check_interval", str(steps), "--model.init_args.optim.lr", "0.01")
        fit(cli)
        return json.loads((version_dir(root) / "before_after.json").read_text())

    short, long = before_after(1), before_after(6)
    assert short["base_val_loss"] == pytest.approx(long["base_val_loss"], rel=1e-6, abs=1e-6)
    assert long["tuned_val_loss"] < short["tuned_val_loss"] < short["base_val_loss"]


def test_an_extended_full_fine_tune_keeps_its_base_loss(tiny_model, tmp_path):
    """Full fine-tuning scores its base before step 1, the only time it exists: the checkpoint keeps the figure,
    so a run extended from it (``--ckpt_path``, a larger ``max_steps``) reports the same base loss, not null."""
    from pathlib import Path

    from harness import demo_cli, fit, version_dir

    def run(steps: int, ckpt_path=None):
        cli = demo_cli(tiny_model("llama"), tmp_path, "--model.init_args.adapter", "lit_lora.adapters.FullFineTuning",
                       "--data.init_args.max_samples", "24", "--trainer.max_steps", str(steps),
                       "--trainer.val_check_interval", "2", "--checkpoint.filename", "{step}")
        fit(cli, ckpt_path=ckpt_path)
        return json.loads((Path(cli.trainer.log_dir) / "before_after.json").read_text())

    first = run(2)
    extended = run(3, str(version_dir(tmp_path) / "checkpoints" / "step=2.ckpt"))
    assert first["base_val_loss"] is not None and extended["base_val_loss"] == first["base_val_loss"]
    assert extended["tuned_val_loss"] != first["tuned_val_loss"]
