"""LightningModules, one per model head."""

from lit_lora.models.base import FineTuneModule
from lit_lora.models.causal_lm import CausalLMModule
from lit_lora.models.classifier import SequenceClassifierModule
from lit_lora.models.generative import GenerativeModule
from lit_lora.models.label_word import LabelWordModule
from lit_lora.models.seq2seq import Seq2SeqModule

__all__ = ["CausalLMModule", "FineTuneModule", "GenerativeModule", "LabelWordModule", "Seq2SeqModule",
           "SequenceClassifierModule"]
