"""Peak memory and time of a LoRA training step: LM head on every position vs on the labelled ones, in chunks.

    python bench/label_only_loss.py                 # vocab 32,000, batch 4 × 1,024, 3 rounds, 2 timed steps each
    python bench/label_only_loss.py --quick         # smoke run: batch 4 × 256, 1 round, 1 timed step
    python bench/label_only_loss.py --vocab 128256  # a Llama-3-sized vocabulary

The model is a random-init ``LlamaForCausalLM`` (``--hidden``, ``--layers``, ``--vocab``) saved to a temporary
directory, trained through ``CausalLMModule.loss_terms`` with LoRA (r=16 on all linear layers, the head frozen)
in float32 on the CPU. A step is ``loss_terms`` + backward of (summed loss / label tokens), as ``training_step``;
there is no optimizer. Two variants of the module's loss:

    full          ``label_only_loss = False``: logits [B, T, V] and ``token_loss.summed_loss`` (before this change)
    label-only    the head on the labelled positions only, in chunks (``lit_lora.models.label_only_loss``)

and two batches of ``--batch`` rows × ``--seq`` tokens (no padding):

    prompt-masked   each row's prompt (on average ``--prompt-share`` of it, from 0.6× to 1.4× that) is -100
    all-labelled    every position has a label

Each (batch, variant) runs in a fresh process, every round in a rotated order. The process runs one warm-up
step, resets its peak resident set (``/proc/self/clear_refs``), then times ``--steps`` steps; it reports the
peak RSS above the RSS before those steps (``VmHWM - VmRSS``) and the median step time. glibc's malloc is
told to give every allocation above 128 KiB its own mapping (``MALLOC_MMAP_THRESHOLD_``), so that RSS follows
what torch holds rather than what the allocator keeps. The tables: every round, then medians over rounds and
the median same-round ratio label-only ÷ full (target for peak memory: ≤ 0.8).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]  # the bench modules, and the working tree's lit_lora

from tables import fmt, table  # noqa: E402

VARIANTS = ("full", "label-only")
BATCHES = ("prompt-masked", "all-labelled")
MIB = 1024 ** 2


# ---- the child: one variant on one batch --------------------------------------------------------------
def proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def make_batch(kind: str, rows: int, seq: int, vocab: int, prompt_share: float) -> dict:
    import torch

    ids = torch.randint(3, vocab, (rows, seq), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    if kind == "prompt-masked":
        for i in range(rows):
            spread = 0.6 + 0.8 * i / max(rows - 1, 1)
            labels[i, :int(seq * min(prompt_share * spread, 0.95))] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def child(args: argparse.Namespace) -> dict:
    import torch

    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    torch.manual_seed(0)
    module = CausalLMModule(args.model, adapter=LoRA(r=16, alpha=32, dropout=0.0), dtype="float32")
    module.configure_model()
    module.label_only_loss = args.variant == "label-only"
    module.label_only_chunk = args.chunk
    batch = make_batch(args.batch_kind, args.batch, args.seq, args.vocab, args.prompt_share)

    def step() -> float:
        module.zero_grad(set_to_none=True)
        summed, count = module.loss_terms(batch, use_cache=False)
        (summed / count.clamp(min=1)).backward()
        return float(summed.detach() / count.clamp(min=1))

    loss = step()  # warm-up: one-off allocations (LoRA gradients, thread pools) before the measurement
    module.zero_grad(set_to_none=True)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = proc_status_kib("VmRSS")
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = proc_status_kib("VmHWM")
    return {"peak_mib": (peak - base) / 1024, "step_s": statistics.median(times), "loss": loss,
            "path": module.loss_path()[1], "labels": int(batch["labels"][:, 1:].ne(-100).sum())}


# ---- the parent -----------------------------------------------------------------------------------------
def build_model(out: Path, vocab: int, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def run_child(args: argparse.Namespace, model: Path, variant: str, batch_kind: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, __file__, "--child", "--model", str(model), "--variant", variant,
               "--batch-kind", batch_kind, *shared_args(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def shared_args(args: argparse.Namespace) -> list[str]:
    out = ["--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq),
           "--prompt-share", str(args.prompt_share), "--steps", str(args.steps)]
    return out + (["--chunk", str(args.chunk)] if args.chunk else [])


def round_table(results: dict) -> str:
    rows = [["batch / variant", "label tokens", "peak MiB", "s/step", "loss"]]
    for (kind, variant), r in results.items():
        if "error" in r:
            rows.append([f"{kind} / {variant}", r["error"], "", "", ""])
            continue
        rows.append([f"{kind} / {variant}", str(r["labels"]), fmt(r["peak_mib"], ".0f"), fmt(r["step_s"], ".2f"),
                     fmt(r["loss"], ".5f")])
    return table(rows)


def median_of(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary_table(rounds: list[dict]) -> str:
    rows = [["batch", "full MiB", "label-only MiB", "memory ratio", "full s/step", "label-only s/step", "time ratio",
             "rounds"]]
    for kind in BATCHES:
        ok = [r for r in rounds if all("error" not in r.get((kind, v), {"error": 1}) for v in VARIANTS)]
        pick = lambda v, key: [r[(kind, v)][key] for r in ok]  # noqa: E731
        ratio = lambda key: median_of([r[(kind, "label-only")][key] / r[(kind, "full")][key] for r in ok])  # noqa: E731
        rows.append([kind, fmt(median_of(pick("full", "peak_mib")), ".0f"),
                     fmt(median_of(pick("label-only", "peak_mib")), ".0f"), fmt(ratio("peak_mib"), ".2f"),
                     fmt(median_of(pick("full", "step_s")), ".2f"), fmt(median_of(pick("label-only", "step_s")), ".2f"),
                     fmt(ratio("step_s"), ".2f"), str(len(ok))])
    return table(rows)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--prompt-share", type=float, default=0.5, help="mean share of a row that is prompt (-100)")
    parser.add_argument("--chunk", type=int, default=None, help="positions per chunk (default: sized to the vocab)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--quick", action="store_true", help="batch 4 × 256, 1 round, 1 timed step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--batch-kind", choices=BATCHES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seq, args.rounds, args.steps = 256, 1, 1
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bench-label-only-") as work:
        model = build_model(Path(work) / "model", args.vocab, args.hidden, args.layers)
        logits_mib = args.batch * args.seq * args.vocab * 4 / MIB
        print(f"model: random-init Llama, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab:,}; LoRA r=16; "
              f"batch {args.batch} × {args.seq} (float32 logits of the batch: {logits_mib:,.0f} MiB)", flush=True)
        runs = [(kind, variant) for kind in BATCHES for variant in VARIANTS]
        rounds = []
        for k in range(args.rounds):
            order = runs[k % len(runs):] + runs[:k % len(runs)]
            results = {run: run_child(args, model, run[1], run[0]) for run in order}
            rounds.append(results)
            print(f"\nround {k + 1}/{args.rounds}\n{round_table(results)}", flush=True)
        print(f"\nsummary: medians over {args.rounds} round(s); ratio = label-only ÷ full (same round)\n"
              f"{summary_table(rounds)}")


if __name__ == "__main__":
    main()
