"""Evaluation is composed (``module.evaluator``), not inherited: the hooks are written once, each head picks an
evaluator, ``compare`` asks the evaluator, and evaluator metrics never reach a checkpoint."""

from __future__ import annotations

import pytest
from torchmetrics import MeanMetric

from lit_lora.evaluation.classification import ClassificationMetrics
from lit_lora.evaluation.compare import CompareSettings, NotComparable, compare_models
from lit_lora.evaluation.evaluators import (ClassificationEvaluator, GenerationEvaluator, LabelWordEvaluator,
                                            LossEvaluator)
from lit_lora.models import (CausalLMModule, FineTuneModule, GenerativeModule, LabelWordModule, Seq2SeqModule,
                             SequenceClassifierModule)

HEADS = {FineTuneModule: LossEvaluator, GenerativeModule: GenerationEvaluator, CausalLMModule: GenerationEvaluator,
         Seq2SeqModule: GenerationEvaluator, LabelWordModule: LabelWordEvaluator,
         SequenceClassifierModule: ClassificationEvaluator}
HOOKS = ("validation_step", "test_step", "on_validation_epoch_start", "on_validation_epoch_end",
         "on_test_epoch_start", "on_test_epoch_end")


@pytest.mark.parametrize("head", list(HEADS), ids=lambda c: c.__name__)
def test_each_head_evaluates_with_its_evaluator_through_the_shared_hooks(head):
    assert head.evaluator_class is HEADS[head]
    for hook in HOOKS:  # the step plumbing lives in FineTuneModule only
        owner = next(klass for klass in head.__mro__ if hook in vars(klass))
        assert owner is FineTuneModule, f"{head.__name__}.{hook} comes from {owner.__name__}"


def test_compare_asks_the_evaluator_whether_it_scores_generated_text(tiny_model):
    assert GenerationEvaluator.compares_generated_text and not LabelWordEvaluator.compares_generated_text
    module = CausalLMModule(tiny_model("llama"))
    module.evaluator = LabelWordEvaluator()  # the evaluator decides, not the module class
    with pytest.raises(NotComparable, match="scored by label metrics"):
        compare_models(module, None, {}, CompareSettings(ckpt_path="last.ckpt"))


def test_the_module_reports_its_evaluators_results(tiny_model):
    module = CausalLMModule(tiny_model("llama"))
    module.evaluator.extra_metrics["train_overlap"] = None
    module.evaluator.predictions.append({"prediction": "x"})
    assert module.extra_metrics == {"train_overlap": None} and module.predictions == [{"prediction": "x"}]


def test_evaluator_metrics_add_nothing_to_a_checkpoint(tiny_model):
    label_word = LabelWordEvaluator()
    label_word.sets.metrics["val_0_likelihood"] = ClassificationMetrics(["a", "b"])
    label_word.sets.losses["val_0"] = MeanMetric()
    for evaluator in (label_word, GenerationEvaluator(), ClassificationEvaluator(), LossEvaluator()):
        assert evaluator.state_dict() == {}
    module = SequenceClassifierModule(tiny_model("roberta"), label_names=["a", "b"])
    assert [k for k in module.state_dict() if k.startswith("evaluator")] == []



@pytest.mark.parametrize("hook", ["on_validation_epoch_start", "on_test_epoch_start"])
def test_evaluation_puts_the_metrics_on_the_strategys_device(tiny_model, hook):
    """Under ZeRO-3 nothing moves the module to the GPU (``zero.Init`` placed its parameters), so metrics left where
    ``__init__`` built them met a CUDA loss on the CPU. Here the strategy's device is ``meta``: they must go there."""
    from types import SimpleNamespace

    import torch

    module = CausalLMModule(tiny_model("llama"))
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")),
                                     state=SimpleNamespace(fn="fit"))
    module.data_contract = SimpleNamespace(split_of=lambda stage: stage, prompts=lambda split: None, source="rows")
    getattr(module, hook)()
    states = [value for metric in module.evaluator.modules() if hasattr(metric, "_defaults")
              for value in (getattr(metric, name) for name in metric._defaults) if torch.is_tensor(value)]
    assert states and {value.device.type for value in states} == {"meta"}
