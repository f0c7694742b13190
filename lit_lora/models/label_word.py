"""A causal LM fine-tuned to answer NLI prompts with the label word, evaluated two ways.

    lit-lora fit  --config configs/tutorials/nli_llama_label_word.yaml
    lit-lora test --config configs/tutorials/nli_llama_label_word.yaml --ckpt_path runs/nli_llama_label_word/.../last.ckpt

Training is ``CausalLMModule``'s: the loss covers the response (label word + EOS) only. Each
evaluation set is scored by

* ``likelihood``: the label word with the highest log-likelihood given the prompt is the prediction
  (``lit_lora.evaluation.likelihood``); nothing is parsed, so nothing is unparseable;
* ``generation``: greedy decoding at the end of the epoch (every set's prompts, longest first, in batched
  ``generate`` calls, left padding, KV cache: ``GenerativeModule.answer_queued``), the answer mapped to a
  label by ``parse_label``; an answer naming no label (or several) counts as wrong and the count is logged
  as ``…/generation/unparseable``.

Metric names: ``val/likelihood/accuracy``, ``val_matched/generation/f1_macro`` … (see ``EvalSetMetrics``).
Label names come from the datamodule as for ``SequenceClassifierModule``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Optional

import torch

from lit_lora.data.eval_sharding import counted_indices, without_uncounted_labels
from lit_lora.evaluation.generation import GenerationSettings
from lit_lora.evaluation.labels import label_index
from lit_lora.evaluation.likelihood import candidate_log_likelihoods
from lit_lora.models.causal_lm import CausalLMModule
from lit_lora.models.eval_sets import EvalSetMetrics

MAX_EXAMPLES = 5  # unparseable answers kept in metrics.json per evaluation set, to show what went wrong


class LabelWordModule(EvalSetMetrics, CausalLMModule):
    """``AutoModelForCausalLM`` answering with a label word; likelihood and generation accuracy / P / R / F1.

    Args:
        label_names: The label words in label-index order; linked from the datamodule by the CLI.
        evaluation: Generation settings; ``generate: false`` keeps the likelihood evaluation only.
    """

    compares_generated_text: ClassVar[bool] = False  # scored by label metrics

    def __init__(self, *args, label_names: Optional[list[str]] = None,
                 evaluation: GenerationSettings = GenerationSettings(max_new_tokens=8, during_validation=True),
                 **kwargs):
        super().__init__(*args, evaluation=evaluation, **kwargs)
        self.label_names = list(label_names) if label_names else None
        self.init_eval_metrics()
        self.unparseable_examples: dict[str, list] = {}

    def configure_model(self) -> None:
        if self.model is None:
            self.resolve_label_names()
        super().configure_model()

    def _label_eval_step(self, stage: str, batch: dict, dataloader_idx: int) -> None:
        self.update_eval_loss(stage, dataloader_idx, *self.loss_terms(without_uncounted_labels(batch)))
        keep = counted_indices(batch)  # rows a padding rank repeats are run but not counted
        gold = torch.tensor([self.label_names.index(r) for r in batch["reference"]], device=self.device)
        scores = candidate_log_likelihoods(self.model, self.tokenizer, batch["prompt"], self.label_names,
                                           add_special_tokens=self.prompt_has_special_tokens())
        self.metrics_for(stage, dataloader_idx, "likelihood").update(scores.argmax(-1)[keep], gold[keep])
        if self._generates(stage):  # answered at the end of the epoch, with every set's prompts
            self.metrics_for(stage, dataloader_idx, "generation", allow_unparseable=True)  # logged in this order
            self.queue_prompts(batch, reference=batch["reference"], eval_set=[dataloader_idx] * len(batch["prompt"]))

    def _score_answers(self, stage: str) -> None:
        """Generation metrics of each evaluation set from the queued rows' answers (counted rows only)."""
        by_set: dict[int, list] = defaultdict(list)
        for row, answer in self.answer_queued():
            by_set[row["eval_set"]] += [(answer.text, row["reference"])] if row["counted"] else []
        for idx, pairs in by_set.items():  # every set a rank ran, counted rows or not: ranks sync the same metrics
            predicted = [label_index(text, self.label_names) for text, _ in pairs]
            gold = [self.label_names.index(reference) for _, reference in pairs]
            self.metrics_for(stage, idx, "generation", allow_unparseable=True).update(
                torch.tensor(predicted, dtype=torch.long, device=self.device),
                torch.tensor(gold, dtype=torch.long, device=self.device))
            examples = self.unparseable_examples.setdefault(f"{self.eval_set_name(stage, idx)}/generation", [])
            for (text, reference), pred in zip(pairs, predicted):
                if pred == -1 and len(examples) < MAX_EXAMPLES:
                    examples.append({"answer": text, "gold": reference})

    def _log_label_metrics(self, stage: str) -> None:
        if self._generates(stage):
            self._score_answers(stage)
        self.log_eval_metrics(stage)
        for name, examples in self.unparseable_examples.items():
            if name in self.extra_metrics:
                self.extra_metrics[name]["unparseable_examples"] = examples
        self.unparseable_examples = {}

    def _check_eval_sets_overlap(self, stage: str) -> None:
        """Every evaluated set (e.g. matched and mismatched) against the training prompts."""
        if not (stage == "test" or self.trainer.state.fn == "validate"):
            return
        names = [name for name in getattr(self.trainer.datamodule, "datasets", {}) if name != "train"]
        overlaps = {name: self.overlap_with_training(name) for name in names}
        self.extra_metrics["train_overlap"] = {name: o for name, o in overlaps.items() if o is not None}

    def on_validation_epoch_start(self) -> None:
        self.unparseable_examples, self.queued = {}, []
        self._check_eval_sets_overlap("val")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._label_eval_step("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_label_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.unparseable_examples, self.queued = {}, []
        self._check_eval_sets_overlap("test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._label_eval_step("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_label_metrics("test")
