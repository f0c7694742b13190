"""Evaluation of modules that write text (causal LMs, encoder-decoders): loss and perplexity of every batch, and
generated answers scored by BLEU, ROUGE and exact match.

At ``lit-lora test`` (and ``validate``, or every validation with ``evaluation.during_validation``) each batch is
scored for loss and its prompts are queued; at the end of the epoch each rank answers its prompts (``AnswerQueue``:
longest first, batched), the answers go back in loader order, metrics go to the logger and ``metrics.json`` (per
group, e.g. DS-1000 library, under ``details``), and every prompt / reference / prediction to ``predictions.jsonl``::

    >>> from lit_lora.evaluation.evaluators import GenerationEvaluator
    >>> GenerationEvaluator().compares_generated_text   # `lit-lora compare` scores its answers
    True

``CausalLMModule`` and ``Seq2SeqModule`` evaluate with it; settings are ``model.init_args.evaluation``
(``GenerationSettings``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

from lit_lora.cluster.run_dir import run_dir
from lit_lora.data.eval_sharding import without_uncounted_labels
from lit_lora.evaluation.evaluators.answer_queue import AnswerQueue
from lit_lora.evaluation.evaluators.base import Evaluator, full_evaluation, gather_rows, generates, \
    overlap_with_training
from lit_lora.evaluation.text_metrics import TextMetrics, score_rows

log = logging.getLogger("lit_lora")


def scored(rows: list[dict]) -> dict:
    """BLEU / ROUGE / exact match / hit_max_new_tokens of answered rows."""
    return score_rows([r["prediction"] for r in rows], [r["reference"] for r in rows],
                      [r["hit_max_new_tokens"] for r in rows])


class GenerationEvaluator(Evaluator):
    """Token-weighted loss and perplexity; generated answers scored against the references."""

    compares_generated_text = True

    def __init__(self):
        super().__init__()
        self.text_metrics = TextMetrics()
        self.queue = AnswerQueue()

    def start(self, module, stage: str) -> None:
        self.text_metrics.reset()
        self.predictions, self.extra_metrics = [], {}
        self.queue.clear()
        if full_evaluation(module, stage):
            self.extra_metrics["train_overlap"] = overlap_with_training(module, module.data_contract.split_of(stage))

    def step(self, module, batch: dict, stage: str, dataloader_idx: int) -> None:
        with module.evaluated_model():
            summed, count = module.loss_terms(without_uncounted_labels(batch))  # a padding rank's repeats add nothing
        self.text_metrics.update_loss(summed / count.clamp(min=1), int(count))  # token-weighted over the whole set
        if not generates(module, stage):
            return
        if "reference" not in batch:
            raise ValueError(f"{module.data_contract.data_class} rows carry no 'prompt' / 'reference' text to "
                             "generate from; set model.init_args.evaluation.generate: false")
        self.queue.add(batch, reference=batch["reference"], group=batch.get("group") or [""] * len(batch["prompt"]))

    def answer(self, module) -> None:
        """The queued rows' answers; the counted ones become this rank's predictions, in loader order."""
        for row, out in self.queue.answer(module):
            if row["counted"]:
                self.predictions.append({"prompt": row["prompt"], "reference": row["reference"],
                                         "prediction": out.text, "hit_max_new_tokens": out.hit_limit,
                                         "group": row["group"]})

    def end(self, module, stage: str) -> None:
        """Loss and perplexity (token-weighted, summed across ranks); generation metrics of every rank's rows."""
        if stage == "val" and module.trainer.sanity_checking:
            if generates(module, stage):
                self.answer(module)  # generation runs once before training, as the first validation will run it
            return
        metrics = self.text_metrics.compute()
        if generates(module, stage):
            self.answer(module)
        rows = gather_rows(self.predictions) if generates(module, stage) else []
        if rows:  # scored once on the gathered rows: each rank's share may differ by one row
            metrics.update(scored(rows))
        for name, value in metrics.items():
            module.log(f"{stage}_{name}", value, prog_bar=stage == "val" and name == "loss", sync_dist=False)
        if generates(module, stage):
            self.report(module, rows)

    def report(self, module, rows: list[dict]) -> None:
        """Per-group metrics, the rows cut at ``max_new_tokens``, and ``predictions.jsonl`` beside ``metrics.json``."""
        for i, row in enumerate(rows):
            row["index"] = i
        groups = defaultdict(list)
        for row in rows:
            if row["group"]:
                groups[row["group"]].append(row)
        if groups:
            self.extra_metrics["per_group"] = {name: {"rows": len(g), **scored(g)}
                                               for name, g in sorted(groups.items())}
        hit = sum(r["hit_max_new_tokens"] for r in rows)
        if hit:
            log.warning("[lit-lora] %d of %d answers stopped at max_new_tokens=%d (not at EOS)", hit, len(rows),
                        module.evaluation.max_new_tokens)
        self.predictions = rows
        out_dir = run_dir(module.trainer)  # every rank: log_dir broadcasts
        if module.trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / module.evaluation.predictions_file
            with path.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            self.extra_metrics["predictions_file"] = str(path)
