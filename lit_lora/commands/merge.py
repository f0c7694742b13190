"""``lit-lora merge``: a trained LoRA / QLoRA adapter folded into its base and saved as a plain transformers model.

    lit-lora merge --config runs/demo/lightning_logs/version_0/config.yaml \
        --adapter_dir runs/demo/lightning_logs/version_0/adapter      # -> runs/demo/lightning_logs/version_0/merged

What ``export.merge: true`` does at the end of a fit, for a run that has finished: the config names the base
and its head (read as ``fit`` reads it), ``--adapter_dir`` a saved adapter (a run's ``adapter/`` or a
checkpoint's ``…-adapter/`` twin). The base is reloaded unquantized (``lit_lora.export.merge_and_save``), and
merged weights that overflow ``--dtype`` (NaN / inf in float16) are refused before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from lit_lora.commands.experiment import load_experiment
from lit_lora.errors import IncompatibleConfig
from lit_lora.export import merge_and_save

def add_arguments(parser) -> None:
    parser.add_argument("--adapter_dir", type=str, required=True,
                        help="the saved adapter: <run>/adapter, or a checkpoint's <name>-adapter twin")
    parser.add_argument("--out_dir", type=Optional[str], default=None,
                        help="where the merged model goes (default: merged/ beside <run>/adapter, "
                             "<name>-merged beside a checkpoint's <name>-adapter)")
    parser.add_argument("--dtype", type=str, default="float32", help="dtype of the merged weights")


def default_out_dir(adapter_dir: Path) -> Path:
    """``<run>/merged`` for ``<run>/adapter`` (as ``export.merge`` writes it); ``<name>-merged`` beside a
    checkpoint's ``<name>-adapter``."""
    if adapter_dir.name == "adapter":
        return adapter_dir.parent / "merged"
    return adapter_dir.with_name(adapter_dir.name.removesuffix("-adapter") + "-merged")


def main(argv: Optional[list[str]] = None) -> None:
    experiment = load_experiment(sys.argv[1:] if argv is None else list(argv), add_arguments, prog="lit-lora merge")
    options, module = experiment.config, experiment.module
    if not module.adapter.spec().mergeable:
        raise IncompatibleConfig(f"lit-lora merge needs a LoRA / QLoRA config, not {module.adapter.method} "
                                 "(full fine-tuning saves the whole model already)")
    adapter_dir = Path(options.adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise IncompatibleConfig(f"--adapter_dir {adapter_dir}: no adapter_config.json (a run's adapter/ or a "
                                 "checkpoint's <name>-adapter/ directory)")
    out = Path(options.out_dir) if options.out_dir else default_out_dir(adapter_dir)
    if out.exists() and any(out.iterdir()):
        raise IncompatibleConfig(f"{out} is not empty: pass another --out_dir or move it away")
    merged = merge_and_save(module.model_name_or_path, adapter_dir, out, type(module).auto_model_class,
                            options.dtype, module.tokenizer, **module.architecture_kwargs())
    print(f"[lit-lora] merged {adapter_dir} into {module.model_name_or_path}: {merged}", flush=True)
