"""Causal language models (Llama, Gemma, Phi, Falcon …) fine-tuned on prompt → response data.

    lit-lora fit --config configs/demo.yaml
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoModelForCausalLM

from lit_lora.models.causal_mask import without_redundant_mask
from lit_lora.models.generative import GenerativeModule


class CausalLMModule(GenerativeModule):
    """``AutoModelForCausalLM`` with full fine-tuning, LoRA or QLoRA; loss on the labelled tokens only;
    evaluation generates answers with left padding (see ``GenerativeModule``)."""

    task_type: ClassVar[str] = "CAUSAL_LM"
    auto_model_class: ClassVar[Any] = AutoModelForCausalLM

    def forward(self, batch: dict, **kwargs: Any) -> Any:
        """A right-padded batch goes without its padding mask: causal attention alone is the same (``causal_mask``)."""
        return super().forward(without_redundant_mask(batch, self.model), **kwargs)
