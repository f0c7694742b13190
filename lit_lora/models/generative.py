"""Generation-based evaluation for the modules that write text (causal LMs and encoder-decoders).

At ``lit-lora test`` (and ``validate``, or every validation with ``during_validation``) each batch is
scored for loss and its prompts are kept; at the end of the epoch each rank answers its prompts, longest
first, in batched ``generate`` calls of ``evaluation.generation_batch_size`` rows (``generate_texts``), and
the answers go back in loader order. BLEU, ROUGE, exact match and perplexity go to the logger and
``metrics.json`` (per group, e.g. DS-1000 library, under ``details``), and every prompt / reference /
prediction to ``predictions.jsonl`` beside it::

    model:
      init_args:
        evaluation:
          max_new_tokens: 64
          do_sample: false
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import torch

from lit_lora.data.eval_sharding import counted_indices, without_uncounted_labels
from lit_lora.evaluation.generation import Generated, GenerationSettings, generate_texts
from lit_lora.evaluation.overlap import check_overlap
from lit_lora.evaluation.text_metrics import TextMetrics, score_rows
from lit_lora.models.base import FineTuneModule

log = logging.getLogger("lit_lora")


def gather_rows(rows: list[dict]) -> list[dict]:
    """Every rank's rows on every rank (a no-op without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


class GenerativeModule(FineTuneModule):
    """A ``FineTuneModule`` whose evaluation also generates answers and scores them.

    Args:
        evaluation: Generation and evaluation settings (see ``GenerationSettings``).
    """

    encoder_decoder: ClassVar[bool] = False
    compares_generated_text: ClassVar[bool] = True

    def __init__(self, *args, evaluation: GenerationSettings = GenerationSettings(), **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluation = evaluation
        self.text_metrics = TextMetrics()
        self.predictions: list[dict] = []
        self.queued: list[dict] = []  # this epoch's rows to answer at its end (``queue_prompts``)
        self.extra_metrics: dict = {}
        self.disable_adapter_in_eval = False  # set by `lit-lora compare` to score the base model

    # ---- which evaluations generate ---------------------------------------------------------------
    def _generates(self, stage: str) -> bool:
        if not self.evaluation.generate:
            return False
        return stage == "test" or self.trainer.state.fn == "validate" or self.evaluation.during_validation

    def _eval_split(self, stage: str) -> str:
        datasets = getattr(self.trainer.datamodule, "datasets", {}) if self.trainer.datamodule else {}
        return "test" if stage == "test" and "test" in datasets else "validation"

    def _start(self, stage: str) -> None:
        self.text_metrics.reset()
        self.predictions = []
        self.queued = []
        self.extra_metrics = {}
        if stage == "test" or self.trainer.state.fn == "validate":
            self.extra_metrics["train_overlap"] = self.check_train_overlap(stage)

    def check_train_overlap(self, stage: str) -> dict | None:
        """Fail (unless allowed) when evaluated rows duplicate training rows; the overlap goes in metrics.json."""
        return self.overlap_with_training(self._eval_split(stage))

    def overlap_with_training(self, split: str) -> dict | None:
        """The overlap of ``split``'s prompts with the training prompts (``None`` when there is nothing to compare)."""
        dm = self.trainer.datamodule
        datasets = getattr(dm, "datasets", {}) if dm is not None else {}
        if "train" not in datasets or split not in datasets or "prompt" not in datasets["train"].column_names \
                or "prompt" not in datasets[split].column_names:
            return None
        overlap = check_overlap(datasets["train"]["prompt"], datasets[split]["prompt"],
                                self.evaluation.allow_train_overlap, f"{getattr(dm, 'source', '')} ({split})")
        if overlap.count:
            log.warning("[lit-lora] EVALUATED ON TRAINING ROWS: %s (allow_train_overlap is on)", overlap.sentence())
        return overlap.to_dict()

    # ---- generation at the end of the epoch -----------------------------------------------------------
    def evaluated_model(self):
        """Within: the model as evaluated (the base alone while ``lit-lora compare`` scores the baseline)."""
        if self.disable_adapter_in_eval and self.is_peft:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def prompt_has_special_tokens(self) -> bool:
        """Tokenise prompts with BOS / EOS as training did (a chat-template prompt carries BOS already)."""
        return self.encoder_decoder or getattr(self.trainer.datamodule, "template", None) != "chat"

    def queue_prompts(self, batch: dict, **columns: list) -> None:
        """Keep ``batch``'s prompts, with ``columns`` (a value a row), to answer at the end of the epoch. Rows
        a padding rank repeats are kept too (``counted`` False): every rank answers as many rows, in as many
        ``generate`` calls, which ranks that gather weights in every forward (ZeRO-3, FSDP) need."""
        counted = set(counted_indices(batch).tolist())
        for i, prompt in enumerate(batch["prompt"]):
            self.queued.append({"prompt": prompt, "counted": i in counted, **{k: v[i] for k, v in columns.items()}})

    def answer_queued(self, max_length: int | None = None) -> list[tuple[dict, Generated]]:
        """Every queued row with its answer, in the order queued (``generate_texts`` sorts and batches them)."""
        queued, self.queued = self.queued, []
        if queued and self.trainer.is_global_zero:
            world = self.trainer.world_size
            log.info("[lit-lora] generating %d answers%s, longest prompt first, up to %d per generate call",
                     len(queued), " on each rank" if world > 1 else "", self.evaluation.generation_batch_size)
        with self.evaluated_model():
            answers = generate_texts(self.model, self.tokenizer, [r["prompt"] for r in queued], self.evaluation,
                                     encoder_decoder=self.encoder_decoder,
                                     add_special_tokens=self.prompt_has_special_tokens(), max_length=max_length)
        return list(zip(queued, answers))

    # ---- steps --------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        with self.evaluated_model():
            self._score_batch(batch, stage)

    def _score_batch(self, batch: dict, stage: str) -> None:
        summed, count = self.loss_terms(without_uncounted_labels(batch))  # a padding rank's repeats add nothing
        self.text_metrics.update_loss(summed / count.clamp(min=1), int(count))  # token-weighted over the whole set
        if not self._generates(stage):
            return
        if "reference" not in batch:
            raise ValueError(f"{type(self.trainer.datamodule).__name__} rows carry no 'prompt' / 'reference' "
                             "text to generate from; set model.init_args.evaluation.generate: false")
        self.queue_prompts(batch, reference=batch["reference"],
                           group=batch.get("group") or [""] * len(batch["prompt"]))

    def _answer(self) -> None:
        """The queued rows' answers; the counted ones become this rank's predictions, in loader order."""
        for row, out in self.answer_queued(max_length=getattr(self.trainer.datamodule, "max_length", None)):
            if row["counted"]:
                self.predictions.append({"prompt": row["prompt"], "reference": row["reference"],
                                         "prediction": out.text, "hit_max_new_tokens": out.hit_limit,
                                         "group": row["group"]})

    def _end(self, stage: str) -> None:
        """Loss and perplexity (token-weighted, summed across ranks); generation metrics of every rank's rows."""
        metrics = self.text_metrics.compute()
        if self._generates(stage):
            self._answer()
        rows = gather_rows(self.predictions) if self._generates(stage) else []
        if rows:  # scored once on the gathered rows: each rank's share may differ by one row
            metrics.update(score_rows([r["prediction"] for r in rows], [r["reference"] for r in rows],
                                      [r["hit_max_new_tokens"] for r in rows]))
        for name, value in metrics.items():
            self.log(f"{stage}_{name}", value, prog_bar=stage == "val" and name == "loss", sync_dist=False)
        if not self._generates(stage):
            return
        for i, row in enumerate(rows):
            row["index"] = i
        groups = defaultdict(list)
        for row in rows:
            if row["group"]:
                groups[row["group"]].append(row)
        if groups:
            self.extra_metrics["per_group"] = {
                name: {"rows": len(g), **score_rows([r["prediction"] for r in g], [r["reference"] for r in g],
                                                    [r["hit_max_new_tokens"] for r in g])}
                for name, g in sorted(groups.items())}
        hit = sum(r["hit_max_new_tokens"] for r in rows)
        if hit:
            log.warning("[lit-lora] %d of %d answers stopped at max_new_tokens=%d (not at EOS)", hit, len(rows),
                        self.evaluation.max_new_tokens)
        self.predictions = rows
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # every rank: log_dir broadcasts
        if self.trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / self.evaluation.predictions_file
            with path.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            self.extra_metrics["predictions_file"] = str(path)

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._end("val")
        elif self._generates("val"):
            self._answer()  # generation runs once before training, as the first validation will run it

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end("test")
