"""The modules that write text (causal LMs and encoder-decoders): ``evaluation`` settings, evaluated by generation.

Evaluation itself is ``lit_lora.evaluation.evaluators.GenerationEvaluator`` (loss, perplexity, BLEU / ROUGE / exact
match, ``predictions.jsonl``), which ``FineTuneModule``'s hooks call; this class adds its settings and the model it
evaluates (the base alone while ``lit-lora compare`` scores the baseline)::

    model:
      init_args:
        evaluation:
          max_new_tokens: 64
          do_sample: false

    >>> from lit_lora.models import CausalLMModule
    >>> module = CausalLMModule("lit_lora/assets/tiny-llama")
    >>> module.evaluation.max_new_tokens, type(module.evaluator).__name__
    (128, 'GenerationEvaluator')
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

from lit_lora.evaluation.evaluators import GenerationEvaluator
from lit_lora.evaluation.generation import GenerationSettings
from lit_lora.models.base import FineTuneModule


class GenerativeModule(FineTuneModule):
    """A ``FineTuneModule`` whose evaluation also generates answers and scores them.

    Args:
        evaluation: Generation and evaluation settings (see ``GenerationSettings``).
    """

    evaluator_class: ClassVar[type] = GenerationEvaluator

    def __init__(self, *args, evaluation: GenerationSettings = GenerationSettings(), **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluation = evaluation
        self.disable_adapter_in_eval = False  # set by `lit-lora compare` to score the base model

    def evaluated_model(self):
        """Within: the model as evaluated (the base alone while ``lit-lora compare`` scores the baseline)."""
        if self.disable_adapter_in_eval and self.is_peft:
            return self.model.disable_adapter()
        return contextlib.nullcontext()
