"""``lit-lora compare``: the base model (no adapter) and the fine-tuned model on the same split, side by side.

    lit-lora compare --config configs/tutorials/codet5_lora.yaml \
        --ckpt_path runs/codet5/lightning_logs/version_0/checkpoints/last.ckpt
    lit-lora compare --config configs/tutorials/codet5_lora.yaml --adapter_dir runs/codet5/lightning_logs/version_0/adapter

The config is read as ``fit`` reads it (``lit_lora.commands.experiment``: any ``--model.…`` / ``--data.…``
override works); the options below join that parser. The evaluation and the report are
``lit_lora.evaluation.compare``: ``report.md``, ``report.json``, ``base/predictions.jsonl`` and
``tuned/predictions.jsonl`` go to ``--out_dir`` (default: ``<run dir>/compare``, or ``compare_N`` when an earlier
report is there; an explicit ``--out_dir`` holding one is refused).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from jsonargparse import ActionYesNo

from lit_lora.ckpt_settings import (CheckpointSettingsMismatch, MissingCheckpoint, check_checkpoint_module,
                                     check_ckpt_path_exists)
from lit_lora.commands.experiment import load_experiment
from lit_lora.evaluation.compare import CompareSettings, NotComparable, compare_models
from lit_lora.evaluation.overlap import TrainOverlapError

OPTIONS = list(CompareSettings.__dataclass_fields__)  # each an option of add_arguments


def add_arguments(parser) -> None:
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="Lightning checkpoint of the fine-tuned run")
    parser.add_argument("--adapter_dir", type=Optional[str], default=None,
                        help="peft adapter directory (or a fully fine-tuned model directory)")
    parser.add_argument("--run_dir", type=Optional[str], default=None,
                        help="run directory with run_summary.json / metrics.csv (default: from the checkpoint)")
    parser.add_argument("--out_dir", type=Optional[str], default=None,
                        help="where the report goes (default: <run dir>/compare, or compare_N when that holds a report)")
    parser.add_argument("--allow_train_overlap", action=ActionYesNo, default=False,
                        help="evaluate even on rows duplicated in the training data (the report's first line says so)")
    parser.add_argument("--right_if", type=str, default="exact",
                        help="when a row counts as right for the example lists: 'exact' or a row ROUGE-L F1 threshold")
    parser.add_argument("--examples", type=int, default=5, help="example rows listed per direction")


def settings_of(config) -> CompareSettings:
    return CompareSettings(**{name: config.get(name) for name in OPTIONS})


def check(config) -> None:
    """The options, and that the tuned model exists: before the base model is scored, not after."""
    settings = settings_of(config)
    try:
        settings.check()
    except ValueError as err:
        raise SystemExit(f"lit-lora compare: {err}") from None
    given, path = ("--ckpt_path", settings.ckpt_path) if settings.ckpt_path else ("--adapter_dir", settings.adapter_dir)
    if not Path(path).exists():
        raise SystemExit(f"lit-lora compare: {given} {path}: no such file or directory")
    if settings.ckpt_path:
        try:
            check_ckpt_path_exists(path)
            check_checkpoint_module(path, config.get("model"), "compare")
        except (MissingCheckpoint, CheckpointSettingsMismatch) as err:
            raise SystemExit(f"lit-lora compare: {err}") from None


def main(argv: Optional[list[str]] = None) -> None:
    experiment = load_experiment(sys.argv[1:] if argv is None else list(argv), add_arguments, check,
                                 prog="lit-lora compare")
    try:
        compare_models(experiment.module, experiment.datamodule, experiment.eval_trainer_kwargs(),
                       settings_of(experiment.config))
    except NotComparable as err:
        raise SystemExit(f"lit-lora compare: {err}") from None
    except TrainOverlapError as err:
        print(f"lit-lora compare: {err}", file=sys.stderr)
        raise SystemExit(2) from None
