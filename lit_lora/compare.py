"""``lit-lora compare``: the base model (no adapter) and the fine-tuned model on the same split, side by side.

    lit-lora compare --config configs/codet5_lora.yaml \
        --ckpt_path runs/codet5/lightning_logs/version_0/checkpoints/last.ckpt
    lit-lora compare --config configs/codet5_lora.yaml --adapter_dir runs/codet5/lightning_logs/version_0/adapter

The config is parsed by the same LightningCLI parser as ``fit`` (any ``--model.…`` / ``--data.…``
override works). Both models are evaluated with the test loop of the module (loss, perplexity, BLEU,
ROUGE, exact match, per-group metrics); ``report.md``, ``report.json``, ``base/predictions.jsonl`` and
``tuned/predictions.jsonl`` go to ``--out_dir`` (default: ``<run dir>/compare``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import lightning as L

from lit_lora.callbacks import peak_memory
from lit_lora.evaluation.overlap import TrainOverlapError
from lit_lora.evaluation.report import build_report, example_rows, plot_loss_curve, write_report


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="lit-lora compare", allow_abbrev=False, description=__doc__.splitlines()[0],
                                     epilog="Other arguments (--config, --model.…, --data.…) go to the fit parser.")
    parser.add_argument("--ckpt_path", help="Lightning checkpoint of the fine-tuned run")
    parser.add_argument("--adapter_dir", help="peft adapter directory (or a fully fine-tuned model directory)")
    parser.add_argument("--run_dir", help="run directory with run_summary.json / metrics.csv (default: from the checkpoint)")
    parser.add_argument("--out_dir", help="where the report goes (default: <run dir>/compare)")
    parser.add_argument("--allow_train_overlap", action="store_true",
                        help="evaluate even on rows duplicated in the training data (the report's first line says so)")
    parser.add_argument("--right_if", default="exact",
                        help="when a row counts as right for the example lists: 'exact' or a row ROUGE-L F1 threshold")
    parser.add_argument("--examples", type=int, default=5, help="example rows listed per direction")
    args, rest = parser.parse_known_args(argv)
    if bool(args.ckpt_path) == bool(args.adapter_dir):
        parser.error("give exactly one of --ckpt_path and --adapter_dir")
    if args.right_if != "exact":
        try:
            float(args.right_if)
        except ValueError:
            parser.error(f"--right_if must be 'exact' or a number, got {args.right_if!r}")
    return args, rest


def default_run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    if args.ckpt_path:
        path = Path(args.ckpt_path)
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return Path(args.adapter_dir).parent


def load_adapter_dir(module, adapter_dir: str) -> None:
    """Put the weights of a peft adapter directory (or a full model directory) into ``module``."""
    path = Path(adapter_dir)
    if (path / "adapter_config.json").is_file():
        from lit_lora.adapters.loading import load_adapter_weights

        if not module.is_peft:
            raise ValueError(f"{path} is a peft adapter but the config's adapter is {module.adapter.method}")
        load_adapter_weights(module.model, path)  # strict: missing or unexpected tensors are an error
    elif (path / "config.json").is_file():
        module.model = None
        module.model_name_or_path = str(path)
        module.configure_model()
    else:
        raise FileNotFoundError(f"{path}: neither adapter_config.json nor config.json found")


def evaluate(module, datamodule, trainer_kwargs: dict, out_dir: Path, ckpt_path: Optional[str]) -> dict:
    trainer = L.Trainer(default_root_dir=str(out_dir), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = {k.removeprefix("test_"): float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("test_") and v.numel() == 1}
    per_group = module.extra_metrics.get("per_group", {})
    return {"metrics": metrics, "per_group": per_group, "predictions": list(module.predictions),
            "overlap": module.extra_metrics.get("train_overlap")}


def run_info(module, run_dir: Path, out_dir: Path, args, split: str, rows: int) -> dict:
    summary_path = run_dir / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    counts = module.parameter_counts or {}
    memory, kind = peak_memory()
    curve = plot_loss_curve(run_dir / "metrics.csv", out_dir / "loss_curve.png")
    return {"model_name_or_path": summary.get("model_name_or_path", module.model_name_or_path),
            "method": module.adapter.method, "checkpoint": args.ckpt_path or args.adapter_dir,
            "split": split, "rows": rows,
            "trainable_params": summary.get("trainable_params", counts.get("trainable_params")),
            "total_params": summary.get("total_params", counts.get("total_params")),
            "train_wall_time_s": summary.get("wall_time_s"), "train_peak_memory_mib": summary.get("peak_memory_mib"),
            "train_peak_memory_kind": summary.get("peak_memory_kind"), "eval_peak_memory_mib": round(memory, 1),
            "eval_peak_memory_kind": kind, "run_summary": str(summary_path) if summary else None,
            "loss_curve": curve.name if curve else None}


def compare(argv: list[str]) -> dict:
    from lit_lora.cli import LitLoraCLI

    args, rest = parse_args(argv)
    cli = LitLoraCLI(args=rest, run=False, save_config_callback=None)
    module, datamodule = cli.model, cli.datamodule
    if not getattr(module, "compares_generated_text", False):
        raise SystemExit(
            f"lit-lora compare: {type(module).__name__} is scored by label metrics, not by generated text; "
            "compare it with `lit-lora test --config …` (the base: an untrained adapter is the identity) and "
            "`lit-lora test --config … --ckpt_path …` (fine-tuned). compare takes CausalLMModule / Seq2SeqModule configs")
    module.evaluation = dataclasses.replace(module.evaluation, generate=True,
                                            allow_train_overlap=args.allow_train_overlap)
    trainer_cfg = cli.config.get("trainer", {})
    trainer_kwargs = {"accelerator": trainer_cfg.get("accelerator", "auto"), "devices": 1,
                      "precision": trainer_cfg.get("precision")}
    trainer_kwargs = {k: v for k, v in trainer_kwargs.items() if v is not None}
    run_dir = default_run_dir(args)
    out_dir = Path(args.out_dir) if args.out_dir else run_dir / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)

    module.disable_adapter_in_eval = True  # the base model: adapter off (full fine-tuning: weights not yet loaded)
    base = evaluate(module, datamodule, trainer_kwargs, out_dir / "base", ckpt_path=None)
    module.disable_adapter_in_eval = False
    if args.adapter_dir:
        load_adapter_dir(module, args.adapter_dir)
    tuned = evaluate(module, datamodule, trainer_kwargs, out_dir / "tuned", ckpt_path=args.ckpt_path)

    split = "test" if "test" in datamodule.datasets else "validation"
    info = run_info(module, run_dir, out_dir, args, split, len(tuned["predictions"]))
    settings = {k: v for k, v in dataclasses.asdict(module.evaluation).items() if k != "predictions_file"}
    examples = example_rows(base["predictions"], tuned["predictions"], args.right_if, args.examples)
    report = build_report(base, tuned, info, tuned["overlap"], examples, settings)
    md, js = write_report(report, out_dir)
    print(f"[lit-lora] wrote {md} and {js}")
    return report


def main(argv: list[str] | None = None) -> None:
    try:
        compare(sys.argv[1:] if argv is None else list(argv))
    except TrainOverlapError as err:
        print(f"lit-lora compare: {err}", file=sys.stderr)
        raise SystemExit(2) from None
