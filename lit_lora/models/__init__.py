"""LightningModules, one per model head."""

from lit_lora.models.base import FineTuneModule
from lit_lora.models.causal_lm import CausalLMModule

__all__ = ["CausalLMModule", "FineTuneModule"]
