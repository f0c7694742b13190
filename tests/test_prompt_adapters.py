"""Prompt adapters build the peft configs they claim and train only virtual tokens (+ the head); wrapping a
model leaves an adapter's settings as they were."""

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_lora.adapters import LoRA, PrefixTuning, PromptTuning, PTuning


@pytest.mark.parametrize("adapter, peft_type, encoder_part", [
    (PTuning(num_virtual_tokens=5, reparameterization="MLP", encoder_hidden_size=16), "P_TUNING", "mlp_head"),
    (PTuning(num_virtual_tokens=5, reparameterization="LSTM", encoder_hidden_size=16), "P_TUNING", "lstm_head"),
    (PromptTuning(num_virtual_tokens=5), "PROMPT_TUNING", None),
])
def test_prompt_adapter_wraps_and_freezes_the_base(tiny_model, adapter, peft_type, encoder_part):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model("roberta"), num_labels=3)
    adapter.modules_to_save = ["classifier"]
    wrapped = adapter.wrap(model, "SEQ_CLS")
    config = wrapped.peft_config["default"]
    assert config.peft_type.value == peft_type and config.num_virtual_tokens == 5
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert all(n.startswith("prompt_encoder.") or ".classifier.modules_to_save." in n for n in trainable)
    assert any(n.startswith("prompt_encoder.") for n in trainable)
    if encoder_part:
        assert any(encoder_part in n for n in trainable)


def test_prefix_tuning_wraps_a_causal_lm_and_freezes_it(tiny_model):
    """Prefix tuning on an architecture that takes prefixes (tests/test_prefix_tuning.py lists them)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    wrapped = PrefixTuning(num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16).wrap(model, "CAUSAL_LM")
    config = wrapped.peft_config["default"]
    assert config.peft_type.value == "PREFIX_TUNING" and config.num_virtual_tokens == 5
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_encoder.") for n in trainable)
    assert any("transform" in n for n in trainable)  # the prefix projection MLP


def test_prompt_tuning_text_init_uses_the_models_tokenizer(tiny_model):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model("roberta"), num_labels=3)
    wrapped = PromptTuning(num_virtual_tokens=4, init_text="Does the premise entail it?").wrap(model, "SEQ_CLS")
    config = wrapped.peft_config["default"]
    assert config.prompt_tuning_init.value == "TEXT" and config.tokenizer_name_or_path == tiny_model("roberta")


def test_num_virtual_tokens_must_be_positive():
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PTuning(num_virtual_tokens=0)


@pytest.mark.parametrize("make", [lambda: LoRA(r=4, modules_to_save=["classifier"]),
                                  lambda: PTuning(num_virtual_tokens=3, encoder_hidden_size=16,
                                                  modules_to_save=["classifier"]),
                                  lambda: PromptTuning(num_virtual_tokens=3, modules_to_save=["classifier"])],
                         ids=["lora", "p_tuning", "prompt_tuning"])
def test_one_adapter_wraps_a_second_classifier_as_it_did_the_first(tiny_model, make):
    """Under SEQ_CLS peft appends its head names ("classifier", "score") to the modules_to_save list it gets:
    the adapter's own list must not grow, or RoBERTa has no "score" the next time."""
    adapter = make()
    first = adapter.wrap(AutoModelForSequenceClassification.from_pretrained(tiny_model("roberta"), num_labels=3),
                         "SEQ_CLS")
    assert adapter.modules_to_save == ["classifier"]
    second = adapter.wrap(AutoModelForSequenceClassification.from_pretrained(tiny_model("roberta"), num_labels=3),
                          "SEQ_CLS")
    assert second.peft_config["default"].modules_to_save == first.peft_config["default"].modules_to_save
