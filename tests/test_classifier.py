"""SequenceClassifierModule: every method lifts accuracy above chance; last-non-pad pooling; head and labels."""

import json
from collections import Counter

import lightning as L
import pytest
import torch
from harness import quiet_trainer, without_dropout

from lit_lora.adapters import FullFineTuning, LoRA, PrefixTuning, PromptTuning, PTuning, QLoRA
from lit_lora.adapters.base import InvalidAdapterSetting
from lit_lora.compatibility import IncompatibleConfig
from lit_lora.data.nli import MultiNLIDataModule
from lit_lora.models.classifier import SequenceClassifierModule, head_module_names, left_align
from lit_lora.optim import OptimizerSettings


@pytest.fixture(scope="module")
def backbone(tiny_model, tmp_path_factory):
    """Tiny models with dropout off: a frozen *random* backbone gives features too faint to survive
    dropout noise in a few hundred steps (a pretrained one does not need this)."""
    return lambda arch: without_dropout(tiny_model(arch), tmp_path_factory.mktemp(f"{arch}-nodrop"))


def fit_and_score(path, adapter, lr, steps=300):
    """Train ``steps`` steps on the bundled MultiNLI sample; matched accuracy and the majority-class rate."""
    L.seed_everything(0)
    dm = MultiNLIDataModule(tokenizer_name_or_path=path, batch_size=16, max_length=64)
    module = SequenceClassifierModule(model_name_or_path=path, adapter=adapter, tokenizer=dm.tokenizer,
                                      optim=OptimizerSettings(lr=lr, warmup_steps=0))
    trainer = quiet_trainer(max_steps=steps, num_sanity_val_steps=0, val_check_interval=steps,
                            check_val_every_n_epoch=None)
    trainer.fit(module, dm)
    gold = Counter(dm.datasets["matched"]["labels"])
    return float(trainer.callback_metrics["val_matched/accuracy"]), max(gold.values()) / sum(gold.values()), module


METHODS = {
    "full": (lambda: FullFineTuning(), 3e-3),
    "lora": (lambda: LoRA(r=8, alpha=16, dropout=0.0), 3e-3),
    "qlora": (lambda: QLoRA(r=8, alpha=16, dropout=0.0, compute_dtype="float32", gradient_checkpointing=False), 3e-3),
    "p_tuning": (lambda: PTuning(num_virtual_tokens=4, encoder_hidden_size=64), 1e-2),
    "prompt_tuning": (lambda: PromptTuning(num_virtual_tokens=4), 1e-2),
}
# Prefix tuning is not here: peft 0.21 cannot inject prefixes into any sequence-classification model on
# transformers >= 5.24 (it looks for a past_key_values argument); tests/test_prefix_tuning.py checks that
# lit-lora refuses it before loading weights and trains it on the architectures that take prefixes.


@pytest.mark.parametrize("arch, method", [("roberta", m) for m in METHODS] + [
    ("llama", "qlora"), ("llama", "prompt_tuning"), ("llama", "p_tuning_lstm")])
def test_method_beats_chance(backbone, arch, method):
    if method == "p_tuning_lstm":
        make, lr = (lambda: PTuning(num_virtual_tokens=4, encoder_hidden_size=32, reparameterization="LSTM"), 1e-2)
    else:
        make, lr = METHODS[method]
    accuracy, majority, module = fit_and_score(backbone(arch), make(), lr)
    assert accuracy > majority + 0.1, f"{arch} {method}: accuracy {accuracy:.3f}, majority class {majority:.3f}"
    # the head was found from the architecture, trained, and its labels are in the config
    assert module.head_modules == (["classifier"] if arch == "roberta" else ["score"])
    assert module.model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert module.parameter_counts["trainable_params"] < module.parameter_counts["total_params"] or method == "full"


def build(path, adapter=None, label_names=("entailment", "neutral", "contradiction")):
    from lit_lora.data.base import load_tokenizer

    tokenizer = load_tokenizer(path)
    module = SequenceClassifierModule(model_name_or_path=path, adapter=adapter or FullFineTuning(),
                                      tokenizer=tokenizer, label_names=list(label_names))
    module.configure_model()
    module.model.eval()
    return module, tokenizer


@pytest.mark.parametrize("adapter", [FullFineTuning, lambda: PromptTuning(num_virtual_tokens=3),
                                     lambda: PTuning(num_virtual_tokens=3)], ids=["full", "prompt", "ptuning"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_last_non_pad_pooling_matches_unpadded_examples(backbone, side, adapter):
    """Each row's logits in a padded batch are the row's alone: pooled on its last real token, and with prompt
    learning (peft hands the decoder ``inputs_embeds``, numbered 0..L-1 whatever the mask) no padding between the
    virtual tokens and the row's own."""
    module, tokenizer = build(backbone("llama"), adapter())
    assert module.model.config.pad_token_id == tokenizer.pad_token_id is not None
    pairs = [("The girl is running.", "A girl is running."),
             ("The old knight is laughing in the forest.", "The knight is not laughing."),
             ("The tall pilot is eating.", "Nobody is eating.")]
    with torch.no_grad():
        single = torch.cat([module(tokenizer(p, h, return_tensors="pt")).logits for p, h in pairs])
        tokenizer.padding_side = side
        batch = tokenizer([p for p, _ in pairs], [h for _, h in pairs], return_tensors="pt", padding=True)
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        batched = module(dict(batch)).logits
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_left_align_equals_left_padding(tiny_model):
    from lit_lora.data.base import load_tokenizer

    tokenizer = load_tokenizer(tiny_model("llama"))
    texts = ["The girl is running.", "The old knight is laughing in the forest today."]
    right = dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side="right"))
    left = dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side="left"))
    aligned = left_align(right)
    assert torch.equal(aligned["input_ids"], left["input_ids"])
    assert torch.equal(aligned["attention_mask"], left["attention_mask"])
    assert left_align(left) is left


def test_head_is_trained_saved_and_kept_out_of_4bit(backbone, tmp_path):
    module, _ = build(backbone("roberta"), QLoRA(r=4, compute_dtype="float32", gradient_checkpointing=False))
    head = [(n, p) for n, p in module.model.named_parameters() if ".classifier.modules_to_save." in n]
    assert head and all(p.requires_grad for _, p in head)
    assert all(p.__class__.__name__ != "Params4bit" for _, p in head)
    assert any(p.__class__.__name__ == "Params4bit" for p in module.model.parameters())  # the rest is 4-bit
    out = module.save_pretrained(tmp_path / "adapter")
    saved = json.loads((out / "classifier_labels.json").read_text())
    assert saved["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert any("classifier" in k for k in f.keys())


def test_head_names_come_from_the_architecture(backbone):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    for arch, head in (("roberta", ["classifier"]), ("llama", ["score"])):
        config = AutoConfig.from_pretrained(backbone(arch), num_labels=3)
        with torch.device("meta"):
            assert head_module_names(AutoModelForSequenceClassification.from_config(config)) == head


def test_prefix_tuning_refuses_an_architecture_without_past_key_values():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2,
                                                                 hidden_dim=64))
    with pytest.raises(InvalidAdapterSetting, match="DistilBertForSequenceClassification.*past_key_values"):
        PrefixTuning(num_virtual_tokens=4).wrap(model, "SEQ_CLS")


def test_label_names_must_come_from_somewhere(backbone):
    module = SequenceClassifierModule(model_name_or_path=backbone("roberta"), adapter=FullFineTuning())
    with pytest.raises(IncompatibleConfig, match="needs label_names"):  # an input error: one line, no traceback
        module.configure_model()
