"""Prefix tuning: supported where peft's prefixes really reach attention, refused before loading weights elsewhere.

The expectations below are the README's method table; under new releases (``make test-latest``) a
change in what peft can inject shows up here first.
"""

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          DistilBertConfig)

from lit_lora.adapters import PrefixTuning
from lit_lora.adapters.prompt import prefix_support_problem
from lit_lora.data.base import load_tokenizer
from lit_lora.models.classifier import SequenceClassifierModule

# Falcon's multi-query attention keeps one key/value head. transformers 5.25 gives FalconConfig the
# num_key_value_heads that peft sizes its prefixes from; before it peft built one prefix per query head.
FALCON_TAKES_PREFIXES = Version(transformers.__version__) >= Version("5.25")
AUTO = {"CAUSAL_LM": AutoModelForCausalLM, "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM,
        "SEQ_CLS": AutoModelForSequenceClassification}


@pytest.mark.parametrize("arch, task_type, supported", [
    ("llama", "CAUSAL_LM", True), ("gemma", "CAUSAL_LM", True), ("phi", "CAUSAL_LM", True),
    ("t5", "SEQ_2_SEQ_LM", True),
    ("falcon", "CAUSAL_LM", FALCON_TAKES_PREFIXES),
    ("roberta", "SEQ_CLS", False), ("llama", "SEQ_CLS", False),  # peft looks for a past_key_values argument
])
def test_prefix_support_is_found_by_running_the_architecture(tiny_model, arch, task_type, supported):
    config = AutoConfig.from_pretrained(tiny_model(arch))
    problem = prefix_support_problem(config, AUTO[task_type], task_type)
    assert (problem is None) == supported, problem


def test_the_probe_leaves_the_global_rng_alone(tiny_model):
    config = AutoConfig.from_pretrained(tiny_model("gemma"))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    prefix_support_problem(config, AutoModelForCausalLM, "CAUSAL_LM", trust_remote_code=False)
    assert torch.equal(torch.rand(3), expected)


def test_an_unsupported_architecture_is_refused_before_its_weights_are_read(tiny_model, tmp_path):
    config_only = tmp_path / "distilbert"
    config_only.mkdir()
    DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(config_only)
    assert not any(config_only.glob("*.safetensors"))  # loading weights would fail with a different error
    module = SequenceClassifierModule(model_name_or_path=str(config_only), adapter=PrefixTuning(num_virtual_tokens=4),
                                      tokenizer=load_tokenizer(tiny_model("roberta")), label_names=["a", "b"])
    with pytest.raises(ValueError, match=r"DistilBertForSequenceClassification \(distilbert\) takes no "
                                         r"past_key_values.*use PTuning, PromptTuning or LoRA"):
        module.configure_model()
