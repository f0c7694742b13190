"""The base model (adapter off) and the fine-tuned model on the same split, side by side, in one report.

    from lit_lora.evaluation.compare import CompareSettings, compare_models
    settings = CompareSettings(ckpt_path="runs/codet5/lightning_logs/version_0/checkpoints/last.ckpt")
    report = compare_models(module, datamodule, {"accelerator": "cpu", "devices": 1}, settings)

Both models are evaluated with the test loop of the module (loss, perplexity, BLEU, ROUGE, exact match,
per-group metrics); ``report.md``, ``report.json`` and each model's predictions (``base/`` and ``tuned/``, named
by ``evaluation.predictions_file``) go to ``settings.out_dir`` (default: ``<run dir>/compare``, or ``compare_N``
when an earlier report is there; an explicit ``out_dir`` holding one is refused). ``lit-lora compare`` is the
command around it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import lightning as L

from lit_lora.cluster.run_files import output_dir, run_of_checkpoint
from lit_lora.console import scalar_metrics
from lit_lora.errors import IncompatibleConfig
from lit_lora.evaluation.report import build_report, console_summary, example_rows, plot_loss_curve, write_report
from lit_lora.memory import peak_memory

log = logging.getLogger(__name__)


REPORT_FILES = ("report.json", "report.md")  # an earlier comparison: never replaced


class NotComparable(TypeError):
    """A module scored by label metrics: it generates no text to compare."""


@dataclass(frozen=True)
class CompareSettings:
    """What to compare and where the report goes (``check`` says what is wrong with a combination)."""

    ckpt_path: Optional[str] = None           # Lightning checkpoint of the fine-tuned run
    adapter_dir: Optional[str] = None         # or a peft adapter directory (or a fully fine-tuned model directory)
    run_dir: Optional[str] = None             # run_summary.json / metrics.csv (default: from the checkpoint)
    out_dir: Optional[str] = None             # default: <run dir>/compare (compare_N when that holds a report)
    allow_train_overlap: bool = False         # evaluate even on rows duplicated in the training data
    right_if: str = "exact"                   # when a row counts as right: "exact" or a row ROUGE-L F1 threshold
    examples: int = 5                         # example rows listed per direction

    def check(self) -> None:
        if bool(self.ckpt_path) == bool(self.adapter_dir):
            raise ValueError("give exactly one of --ckpt_path and --adapter_dir")
        if self.right_if != "exact":
            try:
                float(self.right_if)
            except ValueError:
                raise ValueError(f"--right_if must be 'exact' or a number, got {self.right_if!r}") from None

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        path = Path(self.ckpt_path or self.adapter_dir)
        found = run_of_checkpoint(path)
        if found:
            return found
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else self.resolved_run_dir() / "compare"


def load_adapter_dir(module, adapter_dir: str) -> None:
    """Put the weights of a peft adapter directory (or a full model directory) into ``module``."""
    check_adapter_dir(module, adapter_dir)
    path = Path(adapter_dir)
    if (path / "adapter_config.json").is_file():
        from lit_lora.adapters.loading import load_adapter_weights

        if not module.is_peft:
            raise IncompatibleConfig(f"--adapter_dir {path} is a peft adapter but the config's model is not one")
        load_adapter_weights(module.model, path)  # strict: missing or unexpected tensors are an error
    else:
        module.model = None
        module.model_name_or_path = str(path)
        module.configure_model()


def check_adapter_dir(module, adapter_dir: str) -> None:
    """Refuse an ``adapter_dir`` that ``load_adapter_dir`` could not load, before the base model is scored (a whole
    evaluation with generation), not after it: ``IncompatibleConfig`` names the directory."""
    path = Path(adapter_dir)
    method = getattr(module.adapter, "method", None)
    if (path / "adapter_config.json").is_file():
        if method in ("full", "none"):
            raise IncompatibleConfig(f"--adapter_dir {path} is a peft adapter but the config's adapter is {method}: "
                                     "give the config the run was trained with")
    elif not (path / "config.json").is_file():
        raise IncompatibleConfig(f"--adapter_dir {path}: neither adapter_config.json (a peft adapter) nor config.json "
                                 "(a fully fine-tuned model) found; a run keeps its adapter in <run dir>/adapter")


def evaluate(module, datamodule, trainer_kwargs: dict, out_dir: Path, ckpt_path: Optional[str]) -> dict:
    """The module's test loop on one device: scalar metrics, per-group metrics, predictions, train overlap."""
    trainer = L.Trainer(default_root_dir=str(out_dir), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    with warnings.catch_warnings():  # the training run's callbacks hold no state a test needs
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = {k.removeprefix("test_"): v for k, v in scalar_metrics(trainer).items() if k.startswith("test_")}
    per_group = module.extra_metrics.get("per_group", {})
    written = module.extra_metrics.get("predictions_file") or out_dir / module.evaluation.predictions_file
    return {"metrics": metrics, "per_group": per_group, "predictions": list(module.predictions),
            "overlap": module.extra_metrics.get("train_overlap"), "predictions_file": str(written)}


def run_info(module, settings: CompareSettings, split: str, rows: int) -> dict:
    """The training run's facts (``run_summary.json``) beside this evaluation's."""
    run_dir, out_dir = settings.resolved_run_dir(), settings.resolved_out_dir()
    summary_path = run_dir / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    counts = module.parameter_counts or {}
    memory, kind = peak_memory()
    curve = plot_loss_curve(run_dir / "metrics.csv", out_dir / "loss_curve.png")
    return {"model_name_or_path": summary.get("model_name_or_path", module.model_name_or_path),
            "method": module.adapter.method, "checkpoint": settings.ckpt_path or settings.adapter_dir,
            "split": split, "rows": rows,
            "trainable_params": summary.get("trainable_params", counts.get("trainable_params")),
            "total_params": summary.get("total_params", counts.get("total_params")),
            "train_wall_time_s": summary.get("wall_time_s"), "train_peak_memory_mib": summary.get("peak_memory_mib"),
            "train_peak_memory_kind": summary.get("peak_memory_kind"), "eval_peak_memory_mib": round(memory, 1),
            "eval_peak_memory_kind": kind, "run_summary": str(summary_path) if summary else None,
            "loss_curve": curve.name if curve else None, "metrics_csv": (run_dir / "metrics.csv").is_file()}


def compare_models(module, datamodule, trainer_kwargs: dict, settings: CompareSettings) -> dict:
    """Evaluate the base (adapter off), then the fine-tuned model; write and return the report.

    Raises ``NotComparable`` for a module scored by label metrics (no generated text to compare) and
    ``evaluation.overlap.TrainOverlapError`` when evaluated rows were trained on (unless allowed)."""
    settings.check()
    if not getattr(getattr(module, "evaluator", None), "compares_generated_text", False):  # its evaluator says
        raise NotComparable(
            f"{type(module).__name__} is scored by label metrics, not by generated text; compare it with "
            "`lit-lora test --config …` (the model as configured: an untrained LoRA / QLoRA adapter leaves the base "
            "as it is, but a new classification head and prompt-learning virtual tokens start random) and "
            "`lit-lora test --config … --ckpt_path …` (fine-tuned). "
            "compare takes CausalLMModule / Seq2SeqModule configs")
    if settings.adapter_dir:
        check_adapter_dir(module, settings.adapter_dir)
    module.evaluation = dataclasses.replace(module.evaluation, generate=True,
                                            allow_train_overlap=settings.allow_train_overlap)
    out_dir = output_dir("compare", settings.out_dir, settings.resolved_run_dir() / "compare", REPORT_FILES)
    settings = dataclasses.replace(settings, out_dir=str(out_dir))  # one directory for the whole comparison
    out_dir.mkdir(parents=True, exist_ok=True)
    module.disable_adapter_in_eval = True  # the base model: adapter off (full fine-tuning: weights not yet loaded)
    log.info("[lit-lora] compare 1/2: the base model (adapter off)")  # progress: stderr; the report: stdout
    base = evaluate(module, datamodule, trainer_kwargs, out_dir / "base", ckpt_path=None)
    module.disable_adapter_in_eval = False
    if settings.adapter_dir:
        load_adapter_dir(module, settings.adapter_dir)
    log.info("[lit-lora] compare 2/2: the fine-tuned model (%s)", settings.ckpt_path or settings.adapter_dir)
    tuned = evaluate(module, datamodule, trainer_kwargs, out_dir / "tuned", ckpt_path=settings.ckpt_path)

    split = ", ".join(datamodule.eval_splits("test"))
    info = run_info(module, settings, split, len(tuned["predictions"]))
    evaluation = {k: v for k, v in dataclasses.asdict(module.evaluation).items() if k != "predictions_file"}
    examples = example_rows(base["predictions"], tuned["predictions"], settings.right_if, settings.examples)
    report = build_report(base, tuned, info, tuned["overlap"], examples, evaluation)
    md, js = write_report(report, out_dir)
    print(console_summary(report, md, js, [base["predictions_file"], tuned["predictions_file"]]), flush=True)
    return report
