"""An adapter loaded onto another base model than the one it was trained on (``lit_lora.adapters.loading``):
tensors of the same shapes load without error onto any model of the family, so it is said; tensors of other
shapes are one error naming the first, not torch's traceback with a line per tensor. A saved prompt loads
into a model wrapped for training as it was trained."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lit_lora.adapters import PrefixTuning, PTuning
from lit_lora.adapters.loading import AdapterMismatchError, load_adapter_weights, load_peft_model
from lit_lora.tiny import build_tiny_model


@pytest.fixture
def adapter_dir(tmp_path, tiny_model) -> str:
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model("llama")),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    return str(tmp_path / "adapter")


def test_an_adapter_on_its_own_base_loads_without_a_word(adapter_dir, tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_lora"):
        load_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model("llama")), adapter_dir)
    assert not [m for m in caplog.messages if "was trained on" in m]


def test_an_adapter_on_another_base_of_the_same_shapes_is_said(adapter_dir, tiny_model, tmp_path, caplog):
    other = str(build_tiny_model("llama", tmp_path / "other", seed=1))
    with caplog.at_level(logging.WARNING, logger="lit_lora"):
        load_peft_model(AutoModelForCausalLM.from_pretrained(other), adapter_dir)
    assert f"[lit-lora] {adapter_dir} was trained on {tiny_model('llama')} (its adapter_config.json) and is loaded " \
           f"onto {other}: what follows is of that pairing; use the config.yaml of the adapter's run if it is not " \
           "meant" in caplog.messages


def test_an_adapter_on_a_base_of_other_shapes_is_one_error(adapter_dir, tmp_path):
    other = str(build_tiny_model("llama", tmp_path / "narrow", hidden=32))
    with pytest.raises(AdapterMismatchError) as info:
        load_peft_model(AutoModelForCausalLM.from_pretrained(other), adapter_dir)
    message = str(info.value)
    assert message.startswith(f"{adapter_dir}: 8 adapter tensors have other shapes than {other} gives them (first: "
                              "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight: "), message
    assert message.endswith("the adapter was trained on another base model; use the config.yaml of its run")
    assert "\n" not in message


def test_an_adapter_for_another_architectures_layers_is_one_error(adapter_dir, tiny_model):
    from transformers import AutoModelForSeq2SeqLM

    t5 = tiny_model("t5")  # its attention layers are q / v, not q_proj / v_proj
    with pytest.raises(AdapterMismatchError) as info:
        load_peft_model(AutoModelForSeq2SeqLM.from_pretrained(t5), adapter_dir)
    message = str(info.value)
    assert message.startswith(f"{adapter_dir}: Target modules "), message
    assert message.endswith(f"not found in the base model ({t5}): the adapter was trained on another base model; "
                            "use the config.yaml of its run"), message


@pytest.mark.parametrize("make", [lambda: PTuning(num_virtual_tokens=3, encoder_hidden_size=16),
                                  lambda: PTuning(num_virtual_tokens=3, reparameterization="LSTM",
                                                  encoder_hidden_size=16),
                                  lambda: PrefixTuning(num_virtual_tokens=3, prefix_projection=True,
                                                       encoder_hidden_size=16)],
                         ids=["p_tuning_mlp", "p_tuning_lstm", "prefix_projection"])
def test_a_saved_encoded_prompt_loads_into_a_training_wrap_as_it_was_trained(tiny_model, tmp_path, make):
    """peft saves these prompts as their encoder's output; ``load_adapter_weights`` (``lit-lora compare
    --adapter_dir``) must not run them through the encoder again, nor take the projection for another base."""
    input_ids = torch.tensor([[1, 5, 9, 13, 40, 77]])
    trained = make().wrap(AutoModelForCausalLM.from_pretrained(tiny_model("llama")), "CAUSAL_LM")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
        expected = trained.eval()(input_ids=input_ids).logits
    trained.save_pretrained(tmp_path / "adapter")
    fresh = make().wrap(AutoModelForCausalLM.from_pretrained(tiny_model("llama")), "CAUSAL_LM")
    load_adapter_weights(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids=input_ids).logits, expected)
