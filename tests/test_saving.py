"""Saved adapters load with plain peft / transformers and give the trained model's logits."""

import os
import stat

import pytest
import torch
from harness import DEMO, build_cli, demo_args, overfit, run_cli
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_lora.adapters import FullFineTuning, LoRA
from lit_lora.adapters.loading import load_peft_model
from lit_lora.errors import IncompatibleConfig
from lit_lora.export import merge_and_save
from lit_lora.finite_guard import NonFiniteWeightsError


def logits_of(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def nudge_trained(model, scale: float = 0.05) -> None:
    """Stand-in for training: move the trained weights (head, LoRA B matrices) off their initialisation."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def test_lora_adapter_round_trip_through_plain_peft_and_merge(tiny_model, tmp_path):
    base_dir = tiny_model("llama")
    _, _, module = overfit(base_dir, LoRA(r=8, alpha=16, dropout=0.0), steps=5)
    out = module.save_pretrained(tmp_path / "adapter")
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "tokenizer.json").exists()

    input_ids = torch.tensor([module.tokenizer("def add(a, b): return a + b")["input_ids"]])
    expected = logits_of(module.model, input_ids)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out))
    torch.testing.assert_close(logits_of(reloaded, input_ids), expected)
    base_only = logits_of(AutoModelForCausalLM.from_pretrained(base_dir), input_ids)
    assert not torch.allclose(base_only, expected, atol=1e-3)  # the adapter really changed something

    merged_dir = merge_and_save(base_dir, out, tmp_path / "merged", AutoModelForCausalLM)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged, input_ids), expected, rtol=1e-4, atol=1e-4)


def test_full_fine_tuning_saves_a_plain_transformers_model(tiny_model, tmp_path):
    _, _, module = overfit(tiny_model("llama"), FullFineTuning(), steps=3, lr=1e-3)
    out = module.save_pretrained(tmp_path / "model")
    input_ids = torch.tensor([[1, 5, 9, 13]])
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out), input_ids),
                               logits_of(module.model, input_ids))


def test_classifier_lora_merges_with_its_trained_head(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lit_lora.models.classifier import SequenceClassifierModule

    module = SequenceClassifierModule(tiny_model("roberta"), adapter=LoRA(r=4, alpha=8, dropout=0.0),
                                      label_names=["entailment", "neutral", "contradiction"])
    module.configure_model()
    nudge_trained(module.model)
    adapter = module.save_pretrained(tmp_path / "adapter")
    merged_dir = merge_and_save(module.model_name_or_path, adapter, tmp_path / "merged",
                                AutoModelForSequenceClassification, **module.architecture_kwargs())
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)
    assert merged.config.id2label[2] == "contradiction"
    input_ids = torch.tensor([[0, 5, 9, 13, 2]])
    torch.testing.assert_close(logits_of(merged, input_ids), logits_of(module.model, input_ids), rtol=1e-4, atol=1e-4)


def test_a_merged_decoder_classifier_keeps_the_pad_token_it_pools_on(tiny_model, tmp_path):
    """Training gives a Llama classifier its pad token from the tokenizer (the base config has none); the merged
    model needs it too, or it refuses every padded batch."""
    from transformers import AutoModelForSequenceClassification

    from lit_lora.data.base import load_tokenizer
    from lit_lora.models.classifier import SequenceClassifierModule

    tokenizer = load_tokenizer(tiny_model("llama"))
    module = SequenceClassifierModule(tiny_model("llama"), adapter=LoRA(r=4, alpha=8, dropout=0.0),
                                      tokenizer=tokenizer, label_names=["entailment", "neutral", "contradiction"])
    module.configure_model()
    nudge_trained(module.model, 0.3)
    batch = dict(tokenizer(["the cat sat on the mat", "hi"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = module.model.eval()(**batch).logits
    merged_dir = merge_and_save(module.model_name_or_path, module.save_pretrained(tmp_path / "adapter"),
                                tmp_path / "merged", AutoModelForSequenceClassification, "float32", module.tokenizer,
                                **module.architecture_kwargs())
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.pad_token_id == tokenizer.pad_token_id is not None
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, embedding", [("gemma", "model.embed_tokens"),
                                             ("falcon", "transformer.word_embeddings")])
def test_a_lora_on_a_tied_embedding_is_not_merged_and_stays_usable_unmerged(tiny_model, tmp_path, arch, embedding):
    """The embedding shares its weight with the output layer (tie_word_embeddings): merging would change both,
    and the merged model would compute something else than the adapter."""
    base_dir = tiny_model(arch)
    model = LoRA(r=4, alpha=8, dropout=0.0, target_modules=[embedding.split(".")[-1]]).wrap(
        AutoModelForCausalLM.from_pretrained(base_dir), "CAUSAL_LM")
    nudge_trained(model)
    input_ids = torch.tensor([[1, 5, 9, 13, 40, 77]])
    expected = logits_of(model, input_ids)
    model.save_pretrained(tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")
    with pytest.raises(IncompatibleConfig) as err:
        merge_and_save(base_dir, adapter, tmp_path / "merged", AutoModelForCausalLM)
    assert str(err.value).startswith(f"refusing to merge {adapter}: its LoRA layer {embedding} adapts a weight tied "
                                     "to lm_head (tie_word_embeddings), which merging would change too. The adapter "
                                     "stays usable unmerged"), str(err.value)
    assert not (tmp_path / "merged").exists()
    reloaded = load_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    torch.testing.assert_close(logits_of(reloaded, input_ids), expected)


def overflowing_adapter(base_dir: str, out) -> str:
    """A finite LoRA adapter whose q_proj update (4 * 4 * 100 * 100 = 160,000 per weight) is past float16's
    largest value (65,504): finite in float32 and bfloat16, inf once merged in float16."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.fill_(100.0)
    model.save_pretrained(out)
    return str(out)


def test_a_merge_that_overflows_its_dtype_is_refused_naming_dtype_and_tensor_and_writes_nothing(tiny_model,
                                                                                                tmp_path):
    from safetensors.torch import load_file

    base_dir = tiny_model("llama")
    adapter = overflowing_adapter(base_dir, tmp_path / "adapter")
    with pytest.raises(NonFiniteWeightsError) as err:
        merge_and_save(base_dir, adapter, tmp_path / "merged", AutoModelForCausalLM, dtype="float16")
    message = str(err.value)
    assert f"refusing to write the merged model {tmp_path / 'merged'}: merging {adapter} into its base in float16" \
           in message
    assert "first: model.layers.0.self_attn.q_proj.weight;" in message and "bfloat16 or float32" in message
    assert not (tmp_path / "merged").exists()

    merged = merge_and_save(base_dir, adapter, tmp_path / "merged", AutoModelForCausalLM, dtype="bfloat16")
    assert all(torch.isfinite(t).all() for t in load_file(str(merged / "model.safetensors")).values())


def test_lit_lora_merge_refuses_a_merge_that_overflows_its_dtype(tiny_model, tmp_path):
    base_dir = tiny_model("llama")
    adapter = overflowing_adapter(base_dir, tmp_path / "adapter")
    with pytest.raises(NonFiniteWeightsError, match=r"in float16 gives non-finite values .* first: model\.layers"):
        run_cli(["merge", "--config", DEMO, "--model.init_args.model_name_or_path", base_dir,
                 "--adapter_dir", adapter, "--dtype", "float16"])
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask-022", "umask-002"])
def test_saved_adapters_and_merged_weights_get_the_mode_the_umask_gives(tiny_model, tmp_path, umask):
    """safetensors writes 0600: the adapter, each checkpoint's adapter twin and the merged model were unreadable to
    the group sharing a run directory, whose every other file follows the umask (0644 under 022)."""
    args = demo_args(tiny_model("llama"), tmp_path, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                     "--baseline.enabled", "false", "--data.init_args.max_samples", "8", "--export.merge", "true",
                     "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1")
    previous = os.umask(umask)
    try:
        build_cli(["fit", *args])
    finally:
        os.umask(previous)
    run = tmp_path / "lightning_logs" / "version_0"
    weights = {p.parent.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*.safetensors")}
    assert weights == dict.fromkeys(["adapter", "epoch=0-step=1-adapter", "epoch=1-step=2-adapter", "merged"],
                                    oct(0o666 & ~umask))  # 0o644 under 022, 0o664 under 002
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes  # as every other file of the run
