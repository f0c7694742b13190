"""A causal LM fine-tuned to answer NLI prompts with the label word, evaluated by likelihood and by generation.

    lit-lora fit  --config configs/tutorials/nli_llama_label_word.yaml
    lit-lora test --config configs/tutorials/nli_llama_label_word.yaml --ckpt_path runs/nli_llama_label_word/.../last.ckpt

Training is ``CausalLMModule``'s: the loss covers the response (label word + EOS) only. Evaluation is
``lit_lora.evaluation.evaluators.LabelWordEvaluator``: per evaluation set, the likelihood of each label word and a
generated answer mapped to a label; metric names ``val/likelihood/accuracy``, ``val_matched/generation/f1_macro`` ….
Label names come from the data (the CLI links them; outside the CLI the data contract brings them) as for
``SequenceClassifierModule``::

    >>> from lit_lora.models import LabelWordModule
    >>> module = LabelWordModule("lit_lora/assets/tiny-llama", label_names=["entailment", "neutral", "contradiction"])
    >>> type(module.evaluator).__name__, module.evaluation.max_new_tokens, module.evaluation.during_validation
    ('LabelWordEvaluator', 8, True)
"""

from __future__ import annotations

from typing import ClassVar, Optional

from lit_lora.evaluation.evaluators import LabelWordEvaluator
from lit_lora.evaluation.generation import GenerationSettings
from lit_lora.models.causal_lm import CausalLMModule
from lit_lora.models.labels import LabelledModule


class LabelWordModule(LabelledModule, CausalLMModule):
    """``AutoModelForCausalLM`` answering with a label word; likelihood and generation accuracy / P / R / F1.

    Args:
        label_names: The label words in label-index order; linked from the datamodule by the CLI.
        evaluation: Generation settings; ``generate: false`` keeps the likelihood evaluation only.
    """

    evaluator_class: ClassVar[type] = LabelWordEvaluator

    def __init__(self, *args, label_names: Optional[list[str]] = None,
                 evaluation: GenerationSettings = GenerationSettings(max_new_tokens=8, during_validation=True),
                 **kwargs):
        super().__init__(*args, evaluation=evaluation, **kwargs)
        self.label_names = list(label_names) if label_names else None

    def configure_model(self) -> None:
        if self.model is None:
            self.resolve_label_names()  # fail before loading any weight
        super().configure_model()
