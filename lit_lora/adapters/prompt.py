"""Prompt-based methods: trained virtual tokens in front of a frozen model (peft prompt learning).

    from lit_lora.adapters import PTuning
    adapter = PTuning(num_virtual_tokens=20, reparameterization="MLP", encoder_hidden_size=128)
    model = adapter.wrap(AutoModelForSequenceClassification.from_pretrained(path, num_labels=3), "SEQ_CLS")

In YAML (``class_path: lit_lora.adapters.PTuning``). Under ``SEQ_CLS`` peft also trains the
classification head; ``SequenceClassifierModule`` names the head modules in ``modules_to_save``.
"""

from __future__ import annotations

import inspect
from typing import Literal, Optional

from torch import nn

from lit_lora.adapters.base import Adapter


class _PromptLearning(Adapter):
    """Shared wrapping of peft's prompt-learning configs (the base model stays frozen)."""

    def __init__(self, num_virtual_tokens: int, modules_to_save: Optional[list[str]]):
        if num_virtual_tokens < 1:
            raise ValueError(f"{type(self).__name__}: num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        self.num_virtual_tokens = num_virtual_tokens
        self.modules_to_save = modules_to_save

    def peft_config(self, task_type: str, model: nn.Module):
        raise NotImplementedError

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(task_type, model))


class PromptTuning(_PromptLearning):
    """Prompt tuning (Lester et al., 2021): a trained embedding per virtual token, prepended to the input.

    Args:
        num_virtual_tokens: Number of trained prompt tokens.
        init_text: Initialise the prompt from the embeddings of this text (e.g. "Classify the relation:")
            instead of at random; the model's own tokenizer encodes it.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "prompt_tuning"

    def __init__(self, num_virtual_tokens: int = 20, init_text: Optional[str] = None,
                 modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.init_text = init_text

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PromptTuningConfig, PromptTuningInit

        kwargs = {}
        if self.init_text:
            kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": self.init_text,
                      "tokenizer_name_or_path": model.config.name_or_path}
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
                                  modules_to_save=self.modules_to_save, **kwargs)


class PTuning(_PromptLearning):
    """P-tuning (Liu et al., 2021): virtual-token embeddings produced by a trained prompt encoder.

    Args:
        num_virtual_tokens: Number of virtual tokens.
        reparameterization: The prompt encoder, ``MLP`` or ``LSTM``.
        encoder_hidden_size: Hidden size of the prompt encoder.
        encoder_num_layers: Layers of the LSTM encoder (the MLP always has two).
        encoder_dropout: Dropout inside the prompt encoder.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "p_tuning"

    def __init__(self, num_virtual_tokens: int = 20, reparameterization: Literal["MLP", "LSTM"] = "MLP",
                 encoder_hidden_size: int = 128, encoder_num_layers: int = 2, encoder_dropout: float = 0.0,
                 modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.reparameterization = reparameterization
        self.encoder_hidden_size = encoder_hidden_size
        self.encoder_num_layers = encoder_num_layers
        self.encoder_dropout = encoder_dropout

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
            encoder_reparameterization_type=self.reparameterization, encoder_hidden_size=self.encoder_hidden_size,
            encoder_num_layers=self.encoder_num_layers, encoder_dropout=self.encoder_dropout,
            modules_to_save=self.modules_to_save,
        )


class PrefixTuning(_PromptLearning):
    """Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer.

    peft feeds the prefixes through the model's ``past_key_values`` input, so only architectures
    whose forward takes one are supported; others fail here with the architecture named.

    Args:
        num_virtual_tokens: Prefix length.
        prefix_projection: Produce the prefixes with a two-layer MLP (more stable training).
        encoder_hidden_size: Hidden size of that MLP.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "prefix_tuning"

    def __init__(self, num_virtual_tokens: int = 20, prefix_projection: bool = False,
                 encoder_hidden_size: int = 512, modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.prefix_projection = prefix_projection
        self.encoder_hidden_size = encoder_hidden_size

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PrefixTuningConfig

        check_prefix_support(model)
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
                                  prefix_projection=self.prefix_projection,
                                  encoder_hidden_size=self.encoder_hidden_size, modules_to_save=self.modules_to_save)


def check_prefix_support(model: nn.Module) -> None:
    """Fail unless the model's backbone accepts ``past_key_values`` (how peft injects the prefixes)."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    if "past_key_values" not in inspect.signature(backbone.forward).parameters:
        raise ValueError(
            f"PrefixTuning: {type(model).__name__} ({model.config.model_type}) takes no past_key_values, "
            f"which peft's prefix tuning needs; use PTuning, PromptTuning or LoRA for this architecture"
        )
