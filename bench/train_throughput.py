"""Training throughput of lit-lora against HF Trainer + PEFT and a plain PyTorch loop, on CPU, interleaved.

    python bench/train_throughput.py                # ~30M-parameter Llama, 60 steps, 3 rounds (a quiet machine)
    python bench/train_throughput.py --quick        # smoke run: tiny model, 4 steps, 1 round

The data are instruction rows made from Python's standard library (``bench/stdlib_rows.py``, python-codes-25k
schema); the model is a Llama-architecture ``LlamaConfig`` with random weights and a byte-level BPE tokenizer
trained on those rows (``lit_lora.tiny``), saved to a temporary directory. Every contender trains the same
model with the same settings (LoRA r=16, alpha 32, dropout 0 on all linear layers; AdamW lr 3e-4, constant,
no weight decay, gradient norm clipped at 1.0; batch 8, max_length 512, ``--steps`` optimizer steps, seed 42) on
the same training split (lit-lora's tokenisation of it):

    lit-lora              lit-lora fit (CLI, configs/demo.yaml + overrides), length-grouped batches (its default)
    lit-lora packing      the same with --data.init_args.packing true (skipped when the CLI does not accept it)
    lit-lora random       the same with --data.init_args.group_by_length false (random order, dynamic padding)
    lit-lora full logits  the default with --model.init_args.label_only_loss false (LM head on every position)
    HF                    peft + transformers.Trainer, DataCollatorForSeq2Seq dynamic padding (the reference)
    HF grouped            the same with length-grouped batches
    HF flatten            the same with DataCollatorWithFlattening (padding-free)
    plain                 the same peft model and batches in a hand-written PyTorch loop
    plain grouped         that loop over lit-lora's length-grouped batches (the default's batches, no lit-lora)
    plain HF-grouped      that loop over transformers' LengthGroupedSampler order (seeded; the Trainer's is not)
    lit-lora bf16         the default with --trainer.precision bf16-mixed (fast where the CPU has AMX / AVX512-BF16)
    lit-lora bf16 weights the same with the frozen base weights stored in bfloat16 (--model.init_args.dtype)
    HF grouped bf16       HF grouped with bf16=True; plain grouped bf16: plain grouped under torch.autocast bf16
    HF grouped bf16 weights  HF grouped bf16 with the base weights loaded in bfloat16
    lit-lora compile      the default with --model.init_args.compile true (torch.compile on the transformer layers)
    HF grouped compile    HF grouped with torch_compile=True (the Trainer compiles the whole model)
    lit-lora dropout      the default with LoRA dropout 0.05 (lit-lora's default and the reference configs')
    HF grouped dropout    HF grouped with lora_dropout=0.05
    lit-lora compile dropout, HF grouped compile dropout: the two compiled ones with LoRA dropout 0.05

Each round runs every contender once, each in a fresh process, the order rotated from round to round. Each
process measures itself (``bench/measure.py``): real tokens/s from the start of step 2 to the end of the last
step, padding fraction, peak RSS, launch-to-first-step time and the loss at steps 1, 10 and the last. A table
per round, then medians over rounds and the median of same-round tokens/s ratios against "HF".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from stdlib_rows import describe, stdlib_rows, write_jsonl  # noqa: E402
from tables import fmt, table  # noqa: E402

REFERENCE = "HF"


@dataclass(frozen=True)
class Contender:
    name: str
    tool: str  # "lit" or one of bench/hf_peft.py's kinds
    args: tuple[str, ...] = field(default_factory=tuple)


CONTENDERS = (
    Contender("lit-lora", "lit"),
    Contender("lit-lora packing", "lit", ("--data.init_args.packing", "true")),
    Contender("lit-lora random", "lit", ("--data.init_args.group_by_length", "false")),
    Contender("lit-lora full logits", "lit", ("--model.init_args.label_only_loss", "false")),
    Contender("HF", "hf"),
    Contender("HF grouped", "hf_grouped"),
    Contender("HF flatten", "hf_flatten"),
    Contender("plain", "plain"),
    Contender("plain grouped", "plain_grouped"),
    Contender("plain HF-grouped", "plain_hf_grouped"),
    Contender("lit-lora bf16", "lit", ("--trainer.precision", "bf16-mixed")),
    Contender("lit-lora bf16 weights", "lit", ("--model.init_args.dtype", "bfloat16",
                                               "--trainer.precision", "bf16-mixed")),
    Contender("HF grouped bf16", "hf_grouped", ("--bf16",)),
    Contender("HF grouped bf16 weights", "hf_grouped", ("--bf16", "--dtype", "bfloat16")),
    Contender("plain grouped bf16", "plain_grouped", ("--bf16",)),
    Contender("lit-lora compile", "lit", ("--model.init_args.compile", "true")),
    Contender("HF grouped compile", "hf_grouped", ("--compile",)),
    Contender("lit-lora bf16 weights compile", "lit", ("--model.init_args.dtype", "bfloat16",
                                                       "--trainer.precision", "bf16-mixed",
                                                       "--model.init_args.compile", "true")),
    Contender("HF grouped bf16 weights compile", "hf_grouped", ("--bf16", "--dtype", "bfloat16", "--compile")),
    Contender("lit-lora dropout", "lit", ("--model.init_args.adapter.init_args.dropout", "0.05")),
    Contender("HF grouped dropout", "hf_grouped", ("--lora-dropout", "0.05")),
    Contender("lit-lora compile dropout", "lit", ("--model.init_args.compile", "true",
                                                  "--model.init_args.adapter.init_args.dropout", "0.05")),
    Contender("HF grouped compile dropout", "hf_grouped", ("--compile", "--lora-dropout", "0.05")),
)


@dataclass
class Settings:
    model: Path
    data: Path
    work: Path
    steps: int
    batch_size: int = 8
    max_length: int = 512
    lr: float = 3e-4
    seed: int = 42
    timeout: int = 3600
    warmup_steps: int = 1  # steps before the tokens/s window (bench/measure.py)


# ---- setup --------------------------------------------------------------------------------------------
def child_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(work / "datasets-cache"))
    # the bench modules (lit_probe, measure) and the working tree's lit_lora, whether or not it is installed
    paths = [str(BENCH), str(ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


def build_model(rows: list[dict], out: Path, hidden: int, layers: int, vocab_size: int) -> tuple[Path, int]:
    """A random-init Llama + BPE tokenizer trained on the rows (``lit_lora.tiny``); returns (path, parameters)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_lora.tiny import build_tiny_model

    texts = [f"{r['instruction']}\n{r['output']}" for r in rows]
    path = build_tiny_model("llama", out, texts=texts, vocab_size=vocab_size, hidden=hidden, layers=layers, seed=0)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).parameters())
    return path, params


def warm_tokenisation(settings: Settings) -> tuple[str, int]:
    """Tokenise once before any timed process (datasets caches it for all of them); describe the split and
    return its row count."""
    from lit_lora.data import InstructionDataModule

    dm = InstructionDataModule(source=str(settings.data), max_length=settings.max_length,
                               batch_size=settings.batch_size, seed=settings.seed,
                               tokenizer_name_or_path=str(settings.model))
    dm.setup("fit")
    lengths = sorted(len(ids) for ids in dm.datasets["train"]["input_ids"])
    return (f"train split {len(lengths)} rows, tokens per row median {lengths[len(lengths) // 2]}, "
            f"max {lengths[-1]}, {dm.truncated_counts.get('train', 0)} cut at max_length={settings.max_length}",
            len(lengths))


def lit_lora_command() -> list[str]:
    """The ``lit-lora`` entry point beside this Python, or ``python -m lit_lora.commands``."""
    script = Path(sys.executable).parent / "lit-lora"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lit_lora.commands"]


def lit_args(settings: Settings, run_dir: Path) -> list[str]:
    """``lit-lora fit`` on configs/demo.yaml, pointed at the bench model and data, with the shared settings."""
    return [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.init_args.model_name_or_path", str(settings.model),
        "--model.init_args.adapter.init_args.r", "16", "--model.init_args.adapter.init_args.alpha", "32",
        "--model.init_args.adapter.init_args.dropout", "0.0",
        "--model.init_args.adapter.init_args.target_modules", "all-linear",
        "--model.init_args.optim.lr", str(settings.lr), "--model.init_args.optim.scheduler", "constant",
        "--model.init_args.optim.warmup_steps", "0", "--model.init_args.optim.weight_decay", "0.0",
        "--data.init_args.source", str(settings.data), "--data.init_args.seed", str(settings.seed),
        "--data.init_args.max_length", str(settings.max_length),
        "--data.init_args.batch_size", str(settings.batch_size),
        "--seed_everything", str(settings.seed), "--trainer.max_steps", str(settings.steps),
        "--trainer.gradient_clip_val", "1.0", "--trainer.limit_val_batches", "0", "--baseline.enabled", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
        "--trainer.callbacks+=lit_probe.Probe",
    ]


def packing_supported(settings: Settings) -> bool:
    """Whether ``lit-lora fit`` accepts ``--data.init_args.packing`` (checked with ``--print_config``)."""
    args = lit_args(settings, settings.work / "print-config") + ["--data.init_args.packing", "true", "--print_config"]
    done = subprocess.run(lit_lora_command() + args, cwd=ROOT, env=child_env(settings.work), capture_output=True,
                          text=True)
    return done.returncode == 0


def command(contender: Contender, settings: Settings, run_dir: Path) -> list[str]:
    if contender.tool == "lit":
        return lit_lora_command() + lit_args(settings, run_dir) + list(contender.args)
    return [sys.executable, str(BENCH / "hf_peft.py"), contender.tool, "--model", str(settings.model),
            "--data", str(settings.data), "--steps", str(settings.steps), "--batch-size", str(settings.batch_size),
            "--max-length", str(settings.max_length), "--lr", str(settings.lr), "--seed", str(settings.seed),
            "--output-dir", str(run_dir), *contender.args]


def warm_lit_lora(settings: Settings) -> None:
    """One untimed one-step ``lit-lora fit``: fills the tokenised cache exactly as the timed runs key it."""
    args = lit_args(settings, settings.work / "runs" / "warm-up")
    args[args.index("--trainer.max_steps") + 1] = "1"
    args.remove("--trainer.callbacks+=lit_probe.Probe")
    done = subprocess.run(lit_lora_command() + args, cwd=ROOT, env=child_env(settings.work), capture_output=True,
                          text=True, timeout=settings.timeout)
    if done.returncode != 0:
        print(f"note: the lit-lora warm-up run failed (exit {done.returncode}); the first lit-lora run tokenises",
              flush=True)


# ---- running ------------------------------------------------------------------------------------------
def run_contender(contender: Contender, settings: Settings, round_index: int) -> dict:
    """One fresh process of ``contender``; its measured result, or ``{"error": …}``."""
    slug = contender.name.replace(" ", "-")
    run_dir = settings.work / "runs" / f"{slug}-round{round_index + 1}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    env = child_env(settings.work)
    env.update(BENCH_RESULT=str(result_path), BENCH_LAUNCH_TIME=repr(time.time()),
               BENCH_WARMUP_STEPS=str(settings.warmup_steps))
    try:
        done = subprocess.run(command(contender, settings, run_dir), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {settings.timeout} s"}
    (run_dir / "stdout.log").write_text(done.stdout)
    (run_dir / "stderr.log").write_text(done.stderr)
    if done.returncode != 0 or not result_path.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"  {contender.name}: exit {done.returncode}, no result; last lines of stderr:\n{tail}", flush=True)
        return {"error": f"exit {done.returncode} (see {run_dir / 'stderr.log'})"}
    return json.loads(result_path.read_text())


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


# ---- reporting ----------------------------------------------------------------------------------------
def loss_cells(result: dict, steps: int) -> list[str]:
    loss = result.get("loss") or {}
    return [fmt(loss.get(str(s)), ".4f") for s in (1, 10, steps)]


HEADER = ["contender", "tokens/s", "padding", "peak RSS MiB", "launch→step1 s", "launch→step1 start s",
          "launch→end s", "loss@1", "loss@10", "loss@last", "step-1 tokens"]


def round_table(results: dict[str, dict], order: list[str], steps: int) -> str:
    rows = [HEADER]
    for name in order:
        r = results.get(name, {})
        if "error" in r or not r:
            rows.append([name, r.get("error", "skipped") if r else "skipped"] + [""] * (len(HEADER) - 2))
            continue
        rows.append([name, fmt(r.get("tokens_per_s"), ".0f"), fmt(r.get("padding"), ".1%"),
                     fmt(r.get("peak_rss_mib"), ".0f"), fmt(r.get("launch_to_step1_s"), ".1f"),
                     fmt(r.get("launch_to_step1_start_s"), ".1f"), fmt(r.get("launch_to_end_s"), ".1f"),
                     *loss_cells(r, steps),
                     fmt(r.get("step1_tokens"), "d")])
    return table(rows)


def median_of(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def step_spread(results: list[dict], first_timed: int) -> Optional[float]:
    """How noisy the machine was for one contender: for each timed step (the same batch in every round), its
    slowest time over the rounds ÷ its fastest, median over the steps. 1.30 means one batch took 30% longer in
    one round than in another, so same-round ratios closer to 1 than that are within the noise."""
    times = [r.get("step_seconds") or {} for r in results]
    spreads = [max(t[s] for t in times) / min(t[s] for t in times) for s in times[0]
               if int(s) >= first_timed and all(t.get(s) for t in times)] if len(times) > 1 else []
    return median_of(spreads)


def summary_table(rounds: list[dict[str, dict]], names: list[str], first_timed: int) -> str:
    rows = [["contender", "tokens/s", "padding", "peak RSS MiB", "launch→step1 s", "launch→step1 start s",
             "launch→end s", f"tokens/s ÷ {REFERENCE}", "rounds", "step spread"]]
    for name in names:
        ok = [r[name] for r in rounds if name in r and "error" not in r[name]]
        ratios = [r[name]["tokens_per_s"] / r[REFERENCE]["tokens_per_s"] for r in rounds
                  if name in r and REFERENCE in r and "error" not in r[name] and "error" not in r[REFERENCE]
                  and r[name].get("tokens_per_s") and r[REFERENCE].get("tokens_per_s")]
        rows.append([name, fmt(median_of([x.get("tokens_per_s") for x in ok]), ".0f"),
                     fmt(median_of([x.get("padding") for x in ok]), ".1%"),
                     fmt(median_of([x.get("peak_rss_mib") for x in ok]), ".0f"),
                     fmt(median_of([x.get("launch_to_step1_s") for x in ok]), ".1f"),
                     fmt(median_of([x.get("launch_to_step1_start_s") for x in ok]), ".1f"),
                     fmt(median_of([x.get("launch_to_end_s") for x in ok]), ".1f"),
                     fmt(median_of(ratios), ".2f"), str(len(ok)), fmt(step_spread(ok, first_timed), ".2f")])
    return table(rows)


def same_round_ratio(rounds: list[dict[str, dict]], numerator, denominator, key: str) -> Optional[float]:
    """Median over rounds of ``key`` of the best of ``numerator`` / the best of ``denominator`` in that round."""
    def best(results: dict, names: tuple[str, ...]) -> Optional[float]:
        values = [results[n].get(key) for n in names if n in results and "error" not in results[n]]
        values = [v for v in values if v is not None]
        return (max(values) if key == "tokens_per_s" else min(values)) if values else None

    ratios = []
    for results in rounds:
        top, bottom = best(results, numerator), best(results, denominator)
        if top is not None and bottom:
            ratios.append(top / bottom)
    return median_of(ratios)


# (what is compared, numerator contenders, denominator contenders, measure): the targets
TARGETS = (
    ("lit-lora default ÷ HF default, tokens/s (target ≥ 2.0)", ("lit-lora",), ("HF",), "tokens_per_s"),
    ("lit-lora best ÷ HF best, both float32, tokens/s (target ≥ 1.2)", ("lit-lora", "lit-lora packing"),
     ("HF", "HF grouped", "HF flatten"), "tokens_per_s"),
    ("lit-lora best ÷ HF best, both float32, torch.compile included, tokens/s",
     ("lit-lora", "lit-lora packing", "lit-lora compile"), ("HF", "HF grouped", "HF flatten", "HF grouped compile"),
     "tokens_per_s"),
    ("lit-lora compile ÷ HF grouped compile (same setting), tokens/s", ("lit-lora compile",), ("HF grouped compile",),
     "tokens_per_s"),
    ("lit-lora compile ÷ lit-lora (torch.compile ÷ eager), tokens/s", ("lit-lora compile",), ("lit-lora",),
     "tokens_per_s"),
    ("lit-lora compile ÷ lit-lora, launch→end (the whole run, compiling included)", ("lit-lora compile",),
     ("lit-lora",), "launch_to_end_s"),
    ("lit-lora best bf16 ÷ HF best float32, tokens/s (target ≥ 1.2)",
     ("lit-lora bf16", "lit-lora bf16 weights", "lit-lora bf16 weights compile"), ("HF", "HF grouped", "HF flatten"),
     "tokens_per_s"),
    ("lit-lora best ÷ HF best, any precision, torch.compile included, tokens/s",
     ("lit-lora", "lit-lora packing", "lit-lora compile", "lit-lora bf16", "lit-lora bf16 weights",
      "lit-lora bf16 weights compile"),
     ("HF", "HF grouped", "HF flatten", "HF grouped compile", "HF grouped bf16", "HF grouped bf16 weights",
      "HF grouped bf16 weights compile"), "tokens_per_s"),
    ("lit-lora bf16 weights compile ÷ HF grouped bf16 weights compile (same setting), tokens/s",
     ("lit-lora bf16 weights compile",), ("HF grouped bf16 weights compile",), "tokens_per_s"),
    ("lit-lora bf16 weights compile ÷ lit-lora bf16 weights (torch.compile ÷ eager, bfloat16), tokens/s",
     ("lit-lora bf16 weights compile",), ("lit-lora bf16 weights",), "tokens_per_s"),
    ("lit-lora bf16 ÷ HF grouped bf16 (same precision), tokens/s", ("lit-lora bf16",), ("HF grouped bf16",),
     "tokens_per_s"),
    ("lit-lora bf16 ÷ plain grouped bf16 (same batches), tokens/s", ("lit-lora bf16",), ("plain grouped bf16",),
     "tokens_per_s"),
    ("lit-lora bf16 ÷ lit-lora (bf16-mixed ÷ float32), tokens/s", ("lit-lora bf16",), ("lit-lora",), "tokens_per_s"),
    ("lit-lora bf16 weights ÷ lit-lora bf16 (bfloat16 base weights), tokens/s", ("lit-lora bf16 weights",),
     ("lit-lora bf16",), "tokens_per_s"),
    ("lit-lora bf16 weights ÷ HF grouped bf16 weights (same setting), tokens/s", ("lit-lora bf16 weights",),
     ("HF grouped bf16 weights",), "tokens_per_s"),
    ("lit-lora random ÷ plain (same batches), tokens/s (target ≥ 0.97)", ("lit-lora random",), ("plain",),
     "tokens_per_s"),
    ("lit-lora ÷ plain grouped (same batches), tokens/s (target ≥ 0.97)", ("lit-lora",), ("plain grouped",),
     "tokens_per_s"),
    ("lit-lora dropout ÷ HF grouped dropout (LoRA dropout 0.05 in both), tokens/s", ("lit-lora dropout",),
     ("HF grouped dropout",), "tokens_per_s"),
    ("lit-lora best ÷ HF best, both float32 with LoRA dropout 0.05, torch.compile included, tokens/s",
     ("lit-lora dropout", "lit-lora compile dropout"), ("HF grouped dropout", "HF grouped compile dropout"),
     "tokens_per_s"),
    ("lit-lora compile dropout ÷ HF grouped compile dropout (same setting), tokens/s", ("lit-lora compile dropout",),
     ("HF grouped compile dropout",), "tokens_per_s"),
    ("lit-lora compile dropout ÷ lit-lora dropout (torch.compile ÷ eager, with dropout), tokens/s",
     ("lit-lora compile dropout",), ("lit-lora dropout",), "tokens_per_s"),
    ("lit-lora ÷ lit-lora full logits (the label-only head), tokens/s", ("lit-lora",), ("lit-lora full logits",),
     "tokens_per_s"),
    ("lit-lora random ÷ HF (same batches), peak RSS (target ≤ 1.0)", ("lit-lora random",), ("HF",), "peak_rss_mib"),
    ("lit-lora ÷ HF grouped, launch→step1 (both longest batch first)", ("lit-lora",), ("HF grouped",),
     "launch_to_step1_s"),
    ("lit-lora ÷ HF, launch→step1 (target ≤ 1.5)", ("lit-lora",), ("HF",), "launch_to_step1_s"),
    ("lit-lora ÷ HF, launch→step1 start", ("lit-lora",), ("HF",), "launch_to_step1_start_s"),
)


def targets_table(rounds: list[dict[str, dict]]) -> str:
    rows = [["ratio (median of same-round ratios)", "value"]]
    for label, top, bottom, key in TARGETS:
        rows.append([label, fmt(same_round_ratio(rounds, top, bottom, key), ".2f")])
    return table(rows)


# ---- main ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows of stdlib data (default 4000; --quick 400)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60; --quick 4)")
    parser.add_argument("--epoch", action="store_true",
                        help="steps = one epoch of batch-8 batches of the training split (overrides --steps): every "
                             "unpacked contender trains on every row once, so the length-grouped ones time the same "
                             "rows in different batches")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="steps left out of the tokens/s window (default 1: timed from step 2); more leaves "
                             "one-off costs such as torch.compile's out (launch→end still has them)")
    parser.add_argument("--hidden", type=int, default=None, help="model hidden size (default 512; --quick 64)")
    parser.add_argument("--layers", type=int, default=None,
                        help="model layers (default 9: 29.6M parameters; --quick 2)")
    parser.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary (default 8192; --quick 512)")
    parser.add_argument("--only", default=None, help="comma-separated contender names to run (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model, data and run logs here")
    parser.add_argument("--json-out", type=Path, default=None, help="write every result to this JSON file")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds before a contender process is stopped")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 4 steps, 1 round")
    args = parser.parse_args(argv)
    defaults = dict(rows=400, steps=4, rounds=1, hidden=64, layers=2, vocab_size=512) if args.quick else \
        dict(rows=4000, steps=60, rounds=3, hidden=512, layers=9, vocab_size=8192)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def chosen_contenders(only: Optional[str]) -> list[Contender]:
    if not only:
        return list(CONTENDERS)
    names = [n.strip() for n in only.split(",")]
    unknown = [n for n in names if n not in {c.name for c in CONTENDERS}]
    if unknown:
        sys.exit(f"unknown contender(s) {unknown}; choose among {[c.name for c in CONTENDERS]}")
    return [c for c in CONTENDERS if c.name in names]


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lit-lora-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"model, data, logs and results.json kept in {work}")


def bench(args: argparse.Namespace, work: Path) -> None:
    os.environ.update(child_env(work))  # this process tokenises once too (the warm-up), into the same cache
    rows = stdlib_rows(args.rows)
    data = write_jsonl(rows, work / "rows.jsonl")
    print(f"data: {describe(rows)} -> {data}", flush=True)
    model, params = build_model(rows, work / "model", args.hidden, args.layers, args.vocab_size)
    print(f"model: random-init LlamaForCausalLM, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab_size}:"
          f" {params / 1e6:.1f}M parameters -> {model}", flush=True)
    settings = Settings(model=model, data=data, work=work, steps=args.steps, timeout=args.timeout,
                        warmup_steps=args.warmup_steps)
    described, train_rows = warm_tokenisation(settings)
    print(f"tokenised: {described}", flush=True)
    if args.epoch:
        args.steps = settings.steps = -(-train_rows // settings.batch_size)
        print(f"--epoch: {args.steps} steps, every training row once (packing covers it in fewer and goes on)")
    if not 0 <= args.warmup_steps < args.steps:
        sys.exit(f"--warmup-steps {args.warmup_steps} leaves no timed step of {args.steps}")
    contenders = chosen_contenders(args.only)
    if any(c.tool == "lit" for c in contenders):
        warm_lit_lora(settings)
    if any(c.name == "lit-lora packing" for c in contenders) and not packing_supported(settings):
        print("note: lit-lora fit does not accept --data.init_args.packing here; skipping 'lit-lora packing'")
        contenders = [c for c in contenders if c.name != "lit-lora packing"]
    print(f"settings: {args.steps} steps, batch {settings.batch_size}, max_length {settings.max_length}, "
          f"lr {settings.lr} constant, LoRA r=16 alpha 32 dropout 0 (0.05 in the dropout ones) all-linear, "
          f"grad clip 1.0, seed {settings.seed}; "
          f"tokens/s timed from the start of step {args.warmup_steps + 1} to the end of step {args.steps}; "
          f"{args.rounds} round(s)",
          flush=True)
    names = [c.name for c in contenders]
    rounds: list[dict[str, dict]] = []
    for k in range(args.rounds):
        order = rotated(contenders, k)
        print(f"\nround {k + 1}/{args.rounds}: {', '.join(c.name for c in order)}", flush=True)
        results = {c.name: run_contender(c, settings, k) for c in order}
        rounds.append(results)
        print(round_table(results, [c.name for c in order], args.steps), flush=True)
    print(f"\nsummary: medians over {args.rounds} round(s); step spread: a timed step's slowest ÷ fastest time "
          f"over the rounds, median over the steps (the machine's noise)\n"
          f"{summary_table(rounds, names, args.warmup_steps + 1)}")
    print(f"\n{targets_table(rounds)}")
    report = {"settings": {**vars(args), "workdir": str(work), "parameters": params, "python": sys.version.split()[0],
                           "contenders": names}, "rounds": rounds}
    (work / "results.json").write_text(json.dumps(report, indent=2, default=str))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
