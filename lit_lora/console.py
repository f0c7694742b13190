"""A console that talks like a tool: quiet libraries, step-based progress, and a closing summary.

Third-party messages a user cannot act on are filtered narrowly, each by its own text and the
module that emits it; every warning lit-lora raises itself stays. ``--verbose`` (or
``LIT_LORA_VERBOSE=1``) brings everything back, Lightning's model table included::

    lit-lora fit --config configs/demo.yaml             # step 120/200 … loss, tokens/s, ETA; then a summary
    lit-lora fit --config configs/demo.yaml --verbose   # every library message as well
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Callable, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from lit_lora.verbosity import verbose

# (message regex, module regex) of warnings.warn calls that say nothing a lit-lora user can act on
NOISE_WARNINGS = [
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch"),  # Lightning vs newer torch
    (r"`is_gradient_checkpointing` is deprecated", r"transformers"),  # peft calls the old name
    (r"`gradient_checkpointing_enable` is deprecated", r"transformers"),  # peft's QLoRA preparation calls it
    # a hint to wrap the command in srun: lit-lora's sbatch scripts do, and a login-node run means no SLURM
    (r"The `srun` command is available on your system but is not used", r"lightning\.fabric"),
    # test / compare load a checkpoint into a new run directory; top-k tracking is a training matter
    (r"The dirpath has changed from", r"lightning\.pytorch"),
    # lit-lora's evaluation metrics are torchmetrics, synchronised across ranks when they compute
    (r"It is recommended to use `self\.log\('(val|test)", r"lightning\.pytorch"),
]
# log records shown once per process (compare builds a Trainer for each model)
ONCE_LOG_RECORDS = [("lightning.pytorch.utilities.rank_zero", ("GPU available:", "TPU available:", "HPU available:"))]
# (logger name, message start) of log records of the same kind
NOISE_LOG_RECORDS = [
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),  # an advertisement
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),  # an optional CPU kernel
    # DeepSpeed, imported by transformers' save_pretrained on any machine, logs its CPU fallback to stdout
    ("DeepSpeed", "Setting accelerator to CPU"),
]


class _OnlyOnce(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes, self.seen = prefixes, set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not message.startswith(self.prefixes):
            return True
        first = message not in self.seen
        self.seen.add(message)
        return first


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries() -> None:
    """Install the filters above (a no-op with ``LIT_LORA_VERBOSE=1``); child processes inherit the switch."""
    if verbose():
        return
    for message, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name, prefix in NOISE_LOG_RECORDS:
        logging.getLogger(name).addFilter(_DropMessages(prefix))
    for name, prefixes in ONCE_LOG_RECORDS:
        logging.getLogger(name).addFilter(_OnlyOnce(prefixes))
    if not sys.stderr.isatty():  # a job log: their bars rewrite one line with \r, piling every refresh onto it
        import datasets
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights"
        datasets.disable_progress_bars()  # "tokenising train" (the kept-rows line that follows stays)


LINE_EVERY_S = 30.0  # a training bar written to a file (a batch job's log) prints a line this often, and at the end


BAR_COUNT = re.compile(r"\|\s*(\d+)/(\d+|\?)\s")  # tqdm's "| 12/200 [" (or "| 0/? [" before the total is known)


class LineByLine:
    """stderr for a progress bar in a file: each refresh on a line of its own. tqdm rewrites one terminal line with
    ``\\r`` (and moves up with ``ESC[A`` to a second bar), which in a job log piles a whole run onto one line.
    A line is written when the bar has moved: not for the bar's creation at 0, nor for the same count printed
    again when the epoch ends and when the bar closes."""

    def __init__(self, stream: Any):
        self.stream = stream
        self._last: Optional[tuple[str, str, str]] = None

    def write(self, text: str) -> int:
        line = text.replace("\x1b[A", "").replace("\r", "").rstrip()
        if line and self._moved(line):
            self.stream.write(line + "\n")
        return len(text)

    def _moved(self, line: str) -> bool:
        count = BAR_COUNT.search(line)
        if count is None:
            return True
        key = (line.split(":", 1)[0], count.group(1), count.group(2))
        if count.group(1) == "0" or key == self._last:
            return False
        self._last = key
        return True

    def flush(self) -> None:
        self.stream.flush()


def _made_on_stderr(init_bar: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``TQDMProgressBar.init_*_tqdm`` whose bar writes to stderr; where that is a file, line by line, and only
    the training bar (an evaluation's would add a line a batch)."""
    def made_on_stderr(self: Any) -> Any:
        terminal, training = sys.stderr.isatty(), init_bar is TQDMProgressBar.init_train_tqdm
        with redirect_stdout(sys.stderr if terminal else LineByLine(sys.stderr) if training else io.StringIO()):
            bar = init_bar(self)
        bar.disable = bar.disable or not (terminal or training)
        return bar
    return made_on_stderr


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps when the run is defined by ``max_steps``
    (``step 120/200``, loss, tokens/s, ETA) and epochs otherwise; no ``v_num`` either way. The bars go to stderr
    (Lightning's go to stdout), so ``lit-lora fit … > results.txt`` keeps the figures and the summary alone."""

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self._tokens = 0
        self._started: Optional[float] = None
        self._last_line = 0.0  # when the training bar last printed (``_line_due``)

    # Lightning builds each bar with ``file=sys.stdout``, read when the bar is made
    init_sanity_tqdm = _made_on_stderr(TQDMProgressBar.init_sanity_tqdm)
    init_train_tqdm = _made_on_stderr(TQDMProgressBar.init_train_tqdm)
    init_validation_tqdm = _made_on_stderr(TQDMProgressBar.init_validation_tqdm)
    init_test_tqdm = _made_on_stderr(TQDMProgressBar.init_test_tqdm)
    init_predict_tqdm = _made_on_stderr(TQDMProgressBar.init_predict_tqdm)

    @staticmethod
    def _by_steps(trainer: Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def get_metrics(self, trainer: Trainer, pl_module: Any) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        tokens = float(self._tokens)  # read when the bar refreshes, not at every batch
        if self._started and tokens:
            items["tokens/s"] = f"{tokens / max(time.perf_counter() - self._started, 1e-9):,.0f}"
        return items

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: Trainer) -> None:
        bar = self.train_progress_bar
        if bar.total == trainer.max_steps:  # set once per fit, not per epoch (nor per batch)
            return
        bar.reset(total=trainer.max_steps)
        bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description("step", refresh=False)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict) and "attention_mask" in batch:  # a tensor sum: no device sync per batch
            self._tokens = self._tokens + batch["attention_mask"].sum()
        elif isinstance(batch, dict) and "input_ids" in batch:
            self._tokens = self._tokens + batch["input_ids"].numel()
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._count_steps(trainer)  # also after a mid-epoch resume, which skips on_train_epoch_start's reset
        bar = self.train_progress_bar
        if trainer.global_step != bar.n and not bar.disable:
            bar.n = trainer.global_step
            if self._line_due(trainer):
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
                bar.refresh()

    def _line_due(self, trainer: Trainer) -> bool:
        """Every step on a terminal; in a file every ``LINE_EVERY_S`` seconds, the first and the last step."""
        now = time.perf_counter()
        if sys.stderr.isatty() or trainer.global_step in (1, trainer.max_steps) or \
                now - self._last_line >= LINE_EVERY_S:
            self._last_line = now
            return True
        return False


def scalar_metrics(trainer: Trainer) -> dict[str, float]:
    """The Trainer's logged metrics that are one number each (per-class vectors and the like left out)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def fit_summary(trainer: Trainer, run_dir: Path, config_path: Optional[str], started: float,
                module: Optional[Any] = None) -> str:
    """What a finished ``fit`` produced and what to run next, in a few lines (``compare`` only for a ``module``
    whose evaluator compares generated text, as ``lit-lora compare`` requires)."""
    metrics = scalar_metrics(trainer)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())
                      if k in ("train_loss", "val_loss") or k.endswith(("accuracy", "f1_macro", "bleu")))
    validated = getattr(module, "validated_at_step", None)
    if shown and validated is not None and validated != trainer.global_step:  # the last validation came earlier
        shown += f" (validation at step {validated})"
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path \
        if trainer.checkpoint_callback is not None else ""
    config = config_path or "<config>"
    lines = [f"[lit-lora] done: {steps_done(trainer, time.perf_counter() - started)}" + (f"; {shown}" if shown else "")]
    for name, path in (("adapter", run_dir / "adapter"), ("merged", run_dir / "merged"),
                       ("metrics", run_dir / "metrics.csv"), ("before/after", run_dir / "before_after.json"),
                       ("config", run_dir / "config.yaml")):
        if path.exists():
            lines.append(f"  {name:<13}{path}")
    compares = getattr(getattr(module, "evaluator", None), "compares_generated_text", False)
    steps = []
    if ckpt:
        lines.append(f"  {'checkpoint':<13}{ckpt}")
        one_node = " --trainer.num_nodes 1" if trainer.num_nodes > 1 else ""  # run where it is printed, not waiting
        steps.append(f"lit-lora test --config {config} --ckpt_path {ckpt}{one_node}")
        if compares:
            steps.append(f"lit-lora compare --config {config} --ckpt_path {ckpt}   # base vs fine-tuned report")
    elif compares and (run_dir / "adapter").exists():  # no checkpoint kept: the adapter is what there is
        adapter = run_dir / "adapter"
        steps.append(f"lit-lora compare --config {config} --adapter_dir {adapter}   # base vs fine-tuned report")
    adapter = getattr(module, "adapter", None)
    mergeable = adapter is not None and adapter.spec().mergeable
    if mergeable and not (run_dir / "merged").exists() and (run_dir / "adapter").exists():
        steps.append(f"lit-lora merge --config {config} --adapter_dir {run_dir / 'adapter'}   # a plain model")
    lines += [("  next: " if i == 0 else "        ") + step for i, step in enumerate(steps)]
    return "\n".join(lines)


def steps_done(trainer: Trainer, elapsed_s: float) -> str:
    """``200 steps in 353 s (training 341 s)``; for a resumed run the steps this process ran, and the training
    time of every segment (``FinalExport`` keeps it in the checkpoints)."""
    export = next((c for c in getattr(trainer, "callbacks", []) if hasattr(c, "training_time_s")), None)
    training = export.training_time_s() if export is not None else None
    start = export.start_step if export is not None else 0
    if start:
        ran = trainer.global_step - start
        text = (f"step {trainer.global_step} ({ran} step{'' if ran == 1 else 's'} after resuming at step {start}) "
                f"in {elapsed_s:.0f} s")
        return text + (f"; training {training:.0f} s over the whole run" if training is not None else "")
    return f"{trainer.global_step} steps in {elapsed_s:.0f} s" + (f" (training {training:.0f} s)" if training else "")


def perplexity_text(loss: float) -> str:
    """exp(loss) to two decimals, or in scientific notation past a million (an untrained model's is huge)."""
    from lit_lora.token_loss import perplexity  # lazily: the console is set up before torch loads

    value = perplexity(loss)
    return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"


GROUP_HEADLINES = ("bleu", "rougeL_fmeasure", "exact_match", "accuracy")


def group_lines(per_group: dict) -> list[str]:
    """One console line per group of rows (DS-1000's libraries), with its headline metrics; ``metrics.json``
    holds every metric under ``details.per_group``."""
    lines = [f"  by group ({len(per_group)}, all metrics in details.per_group):"] if per_group else []
    for name, scores in per_group.items():
        shown = ", ".join(f"{k} {scores[k]:.4g}" for k in GROUP_HEADLINES if isinstance(scores.get(k), (int, float)))
        rows = scores.get("rows", "?")
        lines.append(f"    {name} ({rows} row{'' if rows == 1 else 's'})" + (f": {shown}" if shown else ""))
    return lines


def scored_splits(names: Optional[list[str]], stage: str) -> str:
    """``"; on the validation split (the data has no test split)"``: what ``stage`` scored (the datamodule's
    ``eval_splits``), for its header."""
    if not names:
        return ""
    missing = " (the data has no test split)" if stage == "test" and "test" not in names and \
        not any(name.startswith("test") for name in names) else ""
    return f"; on the {', '.join(names)} split{'s' if len(names) > 1 else ''}{missing}"


def evaluation_lines(trainer: Trainer, stage: str, result: dict, path: Path,
                     splits: Optional[list[str]] = None) -> list[str]:
    """What ``lit-lora validate`` / ``test`` prints: the checkpoint and ``splits`` scored, each scalar metric, the
    per-group lines and the predictions file (``result``: what ``callbacks.MetricsWriter`` wrote to ``path``)."""
    scalars = result["metrics"]
    width = max((len(name) for name in scalars), default=0) + 2
    rows = [f"  {name:<{width}}{value:.6g}" for name, value in sorted(scalars.items())]
    scored = f"checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else (
        "no --ckpt_path: the model as configured, untrained (a new LoRA adapter leaves the base model as it is; "
        "a new classification head or prompt-learning virtual tokens start random)")
    lines = [f"[lit-lora] {stage} metrics ({scored}{scored_splits(splits, stage)}), written to {path}:", *rows]
    details = result["details"] if isinstance(result["details"], dict) else {}
    lines += group_lines(details.get("per_group") or {})
    if details.get("predictions_file"):
        lines.append(f"  predictions: {details['predictions_file']}")
    return lines
