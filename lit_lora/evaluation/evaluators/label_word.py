"""Evaluation of a causal LM that answers with a label word, per evaluation set, two ways:

* ``likelihood``: the label word with the highest log-likelihood given the prompt is the prediction
  (``lit_lora.evaluation.likelihood``); nothing is parsed, so nothing is unparseable;
* ``generation``: greedy answers generated at the end of the epoch (every set's prompts together, longest first:
  ``AnswerQueue``), each mapped to a label by ``label_index``; an answer naming no label (or several) counts as
  wrong, is counted as ``…/generation/unparseable`` and up to ``MAX_EXAMPLES`` of them are kept in metrics.json.

    >>> from lit_lora.evaluation.evaluators import LabelWordEvaluator
    >>> LabelWordEvaluator().compares_generated_text   # scored by label metrics, not by text overlap
    False

Metric names: ``val/likelihood/accuracy``, ``val_matched/generation/f1_macro`` … (``EvalSetMetrics``). Prompts are
scored and generated from as the data contract says (``add_special_tokens``; generation cuts them to
``max_length``), exactly as ``GenerationEvaluator`` does.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from lit_lora.cluster.sharding import run_device
from lit_lora.data.eval_sharding import counted_indices, without_uncounted_labels
from lit_lora.evaluation.evaluators.answer_queue import AnswerQueue
from lit_lora.evaluation.evaluators.base import Evaluator, full_evaluation, generates, overlap_with_training
from lit_lora.evaluation.evaluators.eval_sets import EvalSetMetrics
from lit_lora.evaluation.labels import UNPARSEABLE, label_index
from lit_lora.evaluation.likelihood import candidate_log_likelihoods

MAX_EXAMPLES = 5  # unparseable answers kept in metrics.json per evaluation set, to show what went wrong


class LabelWordEvaluator(Evaluator):
    """Likelihood and generation accuracy / precision / recall / F1 of ``module.label_names``, per evaluation set."""

    def __init__(self):
        super().__init__()
        self.sets = EvalSetMetrics()
        self.queue = AnswerQueue()
        self.unparseable_examples: dict[str, list] = {}

    def start(self, module, stage: str) -> None:
        """Every evaluated set (e.g. matched and mismatched) is checked against the training prompts."""
        self.unparseable_examples = {}
        self.queue.clear()
        if full_evaluation(module, stage):
            overlaps = {name: overlap_with_training(module, name) for name in module.data_contract.evaluated_splits()}
            self.extra_metrics["train_overlap"] = {name: o for name, o in overlaps.items() if o is not None}

    def step(self, module, batch: dict, stage: str, dataloader_idx: int) -> None:
        self.sets.update_loss(module, stage, dataloader_idx, *module.loss_terms(without_uncounted_labels(batch)))
        keep = counted_indices(batch)  # rows a padding rank repeats are run but not counted
        names, contract = module.label_names, module.data_contract
        gold = torch.tensor([names.index(r) for r in batch["reference"]], device=run_device(module))
        scores = candidate_log_likelihoods(module.model, contract.tokenizer, batch["prompt"], names,
                                           add_special_tokens=contract.add_special_tokens,
                                           split_special_tokens=contract.prompt_is_row_text)
        self.sets.metrics_for(module, stage, dataloader_idx, "likelihood").update(scores.argmax(-1)[keep], gold[keep])
        if generates(module, stage):  # answered at the end of the epoch, with every set's prompts
            self.sets.metrics_for(module, stage, dataloader_idx, "generation", allow_unparseable=True)  # log order
            self.queue.add(batch, reference=batch["reference"], eval_set=[dataloader_idx] * len(batch["prompt"]))

    def end(self, module, stage: str) -> None:
        if generates(module, stage):
            self.score_answers(module, stage)
        self.sets.log(module, stage, self.extra_metrics)
        for name, examples in self.unparseable_examples.items():
            if name in self.extra_metrics:
                self.extra_metrics[name]["unparseable_examples"] = examples
        self.unparseable_examples = {}

    def score_answers(self, module, stage: str) -> None:
        """Generation metrics of each evaluation set from the queued rows' answers (counted rows only)."""
        names, device = module.label_names, run_device(module)
        by_set: dict[int, list] = defaultdict(list)
        for row, answer in self.queue.answer(module):
            by_set[row["eval_set"]] += [(answer.text, row["reference"])] if row["counted"] else []
        for idx, pairs in by_set.items():  # every set a rank ran, counted rows or not: ranks sync the same metrics
            predicted = [label_index(text, names) for text, _ in pairs]
            gold = [names.index(reference) for _, reference in pairs]
            self.sets.metrics_for(module, stage, idx, "generation", allow_unparseable=True).update(
                torch.tensor(predicted, dtype=torch.long, device=device),
                torch.tensor(gold, dtype=torch.long, device=device))
            examples = self.unparseable_examples.setdefault(f"{self.sets.set_name(module, stage, idx)}/generation", [])
            for (text, reference), pred in zip(pairs, predicted):
                if pred == UNPARSEABLE and len(examples) < MAX_EXAMPLES:
                    examples.append({"answer": text, "gold": reference})
