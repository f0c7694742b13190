"""Evaluators: how a ``FineTuneModule`` evaluates, composed into it rather than inherited.

``FineTuneModule`` writes the validation / test hooks once and hands each call to ``module.evaluator``
(``start`` / ``step`` / ``end``); a head class picks its evaluator by ``evaluator_class``:

    >>> from lit_lora.models import CausalLMModule, LabelWordModule, SequenceClassifierModule
    >>> [cls.evaluator_class.__name__ for cls in (CausalLMModule, LabelWordModule, SequenceClassifierModule)]
    ['GenerationEvaluator', 'LabelWordEvaluator', 'ClassificationEvaluator']

``LossEvaluator`` (the model's own loss), ``GenerationEvaluator`` (loss, perplexity, BLEU / ROUGE / exact match,
predictions.jsonl), ``LabelWordEvaluator`` (likelihood and generation label metrics per evaluation set),
``ClassificationEvaluator`` (classifier logits -> label metrics per evaluation set).
"""

from lit_lora.evaluation.evaluators.base import Evaluator, LossEvaluator
from lit_lora.evaluation.evaluators.classification import ClassificationEvaluator
from lit_lora.evaluation.evaluators.generation import GenerationEvaluator
from lit_lora.evaluation.evaluators.label_word import LabelWordEvaluator

__all__ = ["ClassificationEvaluator", "Evaluator", "GenerationEvaluator", "LabelWordEvaluator", "LossEvaluator"]
