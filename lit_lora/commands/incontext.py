"""``lit-lora incontext``: zero- and k-shot prompting of a config's model on its data, no training.

    lit-lora incontext --config configs/nli/llama3_8b_incontext_multinli.yaml --shots 0 1 --split matched
    lit-lora incontext --config configs/demo.yaml --shots 0 1 3 --max_rows 50   # into runs/demo/incontext

The config is read as ``fit`` reads it (``lit_lora.commands.experiment``); the options below join that parser.
Prompt building and scoring are ``lit_lora.evaluation.incontext``; ``incontext.json`` and
``predictions_<k>shot.jsonl`` go to ``--out_dir`` (default ``<trainer.default_root_dir>/incontext``, numbered
``incontext_N`` when an earlier evaluation is there; an explicit ``--out_dir`` holding one is refused).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

from lit_lora.cluster.run_files import output_dir
from lit_lora.commands.experiment import load_experiment
from lit_lora.evaluation.incontext import evaluate_incontext
from lit_lora.strict_json import dumps


def add_arguments(parser) -> None:
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3], help="k of each k-shot evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demonstration draw")
    parser.add_argument("--split", type=Optional[str], default=None,
                        help="evaluated split (default: the first that is not train)")
    parser.add_argument("--max_rows", type=Optional[int], default=None, help="evaluate only the first N rows")
    parser.add_argument("--out_dir", type=Optional[str], default=None,
                        help="where the predictions and scores go (default: <trainer.default_root_dir or runs>/"
                             "incontext, or incontext_N when that holds an earlier evaluation)")


def main(argv: Optional[list[str]] = None) -> None:
    experiment = load_experiment(sys.argv[1:] if argv is None else list(argv), add_arguments,
                                 prog="lit-lora incontext")
    options, module, datamodule = experiment.config, experiment.module, experiment.datamodule
    module.evaluation = dataclasses.replace(module.evaluation, generate=True)
    root = Path((options.get("trainer") or {}).get("default_root_dir") or "runs")
    out_dir = output_dir("incontext", options.out_dir, root / "incontext",
                         ("incontext.json", "predictions_*shot.jsonl"))
    results = evaluate_incontext(module, datamodule, options.shots, options.seed, options.split, options.max_rows,
                                 out_dir)
    (out_dir / "incontext.json").write_text(dumps(results, indent=2))
    print(dumps(results, indent=2))
    shots = ", ".join(f"predictions_{k}shot.jsonl" for k in options.shots)
    # stdout holds the scores alone (JSON a script can read); where they went is a log line
    print(f"[lit-lora] incontext: wrote {out_dir / 'incontext.json'} and {shots} in {out_dir}", file=sys.stderr,
          flush=True)
