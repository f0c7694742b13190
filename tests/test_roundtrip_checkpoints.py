"""Every method and head round-trips: the trained model, its Lightning checkpoint loaded into a fresh module, and its
saved adapter loaded with plain peft give the same logits; a checkpoint or adapter of another configuration is an
error, not a silently partial model."""

import re
import warnings

import pytest
import torch
from peft import PeftModel

from lit_lora.adapters import FullFineTuning, LoRA, NoAdapter, PrefixTuning, PromptTuning, PTuning
from lit_lora.data.base import load_tokenizer
from lit_lora.errors import IncompatibleConfig, InputError
from lit_lora.export import merge_and_save
from lit_lora.models import CausalLMModule
from lit_lora.models.checkpoint_state import CheckpointWeightsMismatch
from lit_lora.models.classifier import SequenceClassifierModule
from lit_lora.models.seq2seq import Seq2SeqModule

LABELS = ["entailment", "neutral", "contradiction"]
MODULES = {"causal": ("llama", CausalLMModule), "seq2seq": ("t5", Seq2SeqModule),
           "classifier": ("roberta", SequenceClassifierModule)}
ADAPTERS = {"lora": lambda: LoRA(r=4, alpha=8, dropout=0.0), "prompt_tuning": lambda: PromptTuning(3),
            "p_tuning": lambda: PTuning(3, encoder_hidden_size=16), "prefix_tuning": lambda: PrefixTuning(3),
            "full": FullFineTuning}


def module_of(tiny_model, kind: str, adapter):
    arch, module_class = MODULES[kind]
    path = tiny_model(arch)
    kwargs = {"label_names": LABELS} if kind == "classifier" else {}
    module = module_class(path, adapter=adapter, tokenizer=load_tokenizer(path), dtype="float32", **kwargs)
    module.configure_model()
    return module


def trained(tiny_model, kind: str, adapter):
    """A module whose trainable weights moved well off their initialisation (a stand-in for training)."""
    module = module_of(tiny_model, kind, adapter)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return module


def logits_of(model, kind: str, tokenizer):
    batch = dict(tokenizer(["the cat sat on the mat", "def add(a, b): return a + b"], padding=True,
                           return_tensors="pt"))
    batch.pop("token_type_ids", None)
    if kind == "seq2seq":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 9], [0, 7, 11]])
    with torch.no_grad():
        return model.eval()(**batch).logits


def checkpoint_of(module) -> dict:
    """What Lightning writes: the module's state dict, cut by its ``on_save_checkpoint``."""
    checkpoint = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def load_checkpoint(module, checkpoint: dict) -> None:
    """As Lightning loads it into a module with ``strict_loading`` False."""
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)


@pytest.mark.parametrize("kind, method", [("causal", "lora"), ("causal", "p_tuning"), ("causal", "prefix_tuning"),
                                          ("causal", "full"), ("seq2seq", "lora"), ("seq2seq", "prompt_tuning"),
                                          ("seq2seq", "prefix_tuning"), ("classifier", "lora"),
                                          ("classifier", "p_tuning")])
def test_checkpoint_and_plain_peft_reload_give_the_trained_logits(tiny_model, tmp_path, kind, method):
    module = trained(tiny_model, kind, ADAPTERS[method]())
    expected = logits_of(module.model, kind, module.tokenizer)

    fresh = module_of(tiny_model, kind, ADAPTERS[method]())
    assert not torch.allclose(logits_of(fresh.model, kind, module.tokenizer), expected, atol=1e-3)
    load_checkpoint(fresh, checkpoint_of(module))
    torch.testing.assert_close(logits_of(fresh.model, kind, module.tokenizer), expected, rtol=0, atol=0)

    saved = module.save_pretrained(tmp_path / "adapter")
    auto = type(module).auto_model_class
    if method == "full":
        reloaded = auto.from_pretrained(saved)
    else:  # the head, where there is one, comes back from the adapter (peft's modules_to_save)
        base = auto.from_pretrained(module.model_name_or_path, **module.architecture_kwargs())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reloaded = PeftModel.from_pretrained(base, str(saved))
        assert not [w for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    torch.testing.assert_close(logits_of(reloaded, kind, module.tokenizer), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("other", [lambda: LoRA(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"]), NoAdapter],
                         ids=["lora_on_fewer_layers", "no_adapter"])
def test_a_checkpoint_with_weights_the_config_does_not_train_is_refused(tiny_model, other):
    """Lightning loads with ``strict=False``: the extra LoRA tensors were dropped and ``lit-lora compare
    --ckpt_path`` scored an adapter on fewer layers (or the bare base) as the fine-tuned model."""
    checkpoint = checkpoint_of(trained(tiny_model, "causal", LoRA(r=4, alpha=8, dropout=0.0)))
    module = module_of(tiny_model, "causal", other())
    with pytest.raises(CheckpointWeightsMismatch,
                       match=r"checkpoint holds \d+ trained weights this (lora|none) model has no place for \(first: "
                             r"model\.base_model\.model\.model\.layers\.0\.\S+lora_A\.default\.weight\): it was "
                             r"written by a lora model"):
        module.on_load_checkpoint(checkpoint)
    deepspeed_state = {k: v for k, v in checkpoint.items() if k != "state_dict"}  # names recorded at save time
    with pytest.raises(CheckpointWeightsMismatch, match="has no place for"):
        module.on_load_checkpoint(deepspeed_state)


def test_a_checkpoint_of_another_method_names_both_methods(tiny_model):
    checkpoint = checkpoint_of(trained(tiny_model, "causal", LoRA(r=4, alpha=8, dropout=0.0)))
    module = module_of(tiny_model, "causal", PTuning(3, encoder_hidden_size=16))
    with pytest.raises(CheckpointWeightsMismatch) as info:
        module.on_load_checkpoint(checkpoint)
    message = str(info.value)
    assert isinstance(info.value, (InputError, RuntimeError))
    assert re.search(r"lacks \d+ trainable weights of this p_tuning model \(first: model\.prompt_encoder", message)
    assert "trained weights this p_tuning model has no place for" in message and "written by a lora model" in message


def test_merging_a_prompt_adapter_is_refused_before_any_weights_load(tiny_model, tmp_path):
    """``lit-lora merge`` checks the config's method; an adapter directory of a prompt method (another run's) went
    on to peft and failed with an AttributeError (no ``merge_and_unload``)."""
    from transformers import AutoModelForCausalLM

    module = trained(tiny_model, "causal", PromptTuning(3))
    saved = module.save_pretrained(tmp_path / "adapter")
    with pytest.raises(IncompatibleConfig, match=r"cannot merge \S+adapter: it is a PROMPT_TUNING adapter \(its "
                                                 r"adapter_config.json\).* Only LoRA / QLoRA adapters merge"):
        merge_and_save(module.model_name_or_path, saved, tmp_path / "merged", AutoModelForCausalLM)
    assert not (tmp_path / "merged").exists()


def test_a_classifier_checkpoint_of_other_labels_is_an_input_error(tiny_model):
    """The command prints an ``InputError`` as one line (a plain ValueError was a traceback)."""
    checkpoint = checkpoint_of(trained(tiny_model, "classifier", LoRA(r=4, alpha=8, dropout=0.0)))
    checkpoint["lit_lora"]["label_names"] = list(reversed(LABELS))
    with pytest.raises(InputError, match=r"trained with labels \['contradiction', 'neutral', 'entailment'\], this "
                                         r"run has \['entailment', 'neutral', 'contradiction'\]: use the label"):
        module_of(tiny_model, "classifier", LoRA(r=4, alpha=8, dropout=0.0)).on_load_checkpoint(checkpoint)
