"""Where one CPU training step spends its time, float32 against bfloat16 autocast: ``torch.profiler`` over the
plain loop of ``bench/hf_peft.py`` (the same peft model and rows as ``bench/train_throughput.py``).

    python bench/step_profile.py                 # 29.6M Llama, 8 rows of median length, 2 profiled steps each
    python bench/step_profile.py --quick         # tiny model: checks that it runs

Prints seconds per step (median of 5 after 2 warm-up steps) and the ops that take the most time, for each
precision. It explains the bench's bf16 figures: what autocast saves in matrix products and what it adds.

It also prints the matrix products' share of a step: their floating-point operations (the profiler's count),
the rate the step runs them at, and the rate of one ``torch.mm`` of the model's largest product shape on this
CPU. Their quotient is the floor on a step's time for any loop that does these products at that rate: how
much faster than this loop (and HF Trainer, which runs the same products) a tool could be at one precision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from hf_peft import pad_batch, peft_model, tokenised_rows  # noqa: E402
from stdlib_rows import stdlib_rows, write_jsonl  # noqa: E402
from train_throughput import build_model  # noqa: E402


def median_batch(train, tokenizer, rows: int = 8) -> dict:
    """``rows`` training rows around the median length, padded as the plain loop pads them."""
    lengths = [len(ids) for ids in train["input_ids"]]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    middle = len(order) // 2
    return pad_batch([train[i] for i in order[middle:middle + rows]], tokenizer.pad_token_id)


def profile(model, batch: dict, bf16: bool, top: int) -> str:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(2):
            step()
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=top)
    seconds = statistics.median(times)
    return (f"{'bfloat16 autocast' if bf16 else 'float32'}: {seconds:.3f} s/step\n"
            f"{matmul_floor(events, model.config, batch, bf16, seconds, steps=2)}\n{table}")


MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_floor(events, config, batch: dict, bf16: bool, seconds: float, steps: int) -> str:
    """One line: the step's matrix-product GFLOP (the profiler's count over ``steps`` steps), torch.mm's rate at
    the model's largest product shape, and the step time that rate allows. Profiled op times are not used: the
    FLOP count's shape recording slows the ops it records."""
    import torch

    flops = sum(e.flops for e in events if e.key in MATRIX_PRODUCTS) / steps
    tokens = batch["input_ids"].numel()
    shape = (tokens, config.hidden_size, config.intermediate_size)
    peak = mm_rate(*shape, dtype=torch.bfloat16 if bf16 else torch.float32)
    return (f"  matrix products: {flops / 1e9:.1f} GFLOP a step; torch.mm {shape[0]}×{shape[1]} @ {shape[1]}×{shape[2]}:"
            f" {peak / 1e9:.0f} GFLOP/s, so no loop doing these products at that rate runs a step in under "
            f"{flops / peak:.3f} s (this loop's step ÷ that floor: {seconds / (flops / peak):.2f})")


def mm_rate(m: int, k: int, n: int, dtype, repeats: int = 10) -> float:
    """FLOP/s of ``torch.mm`` of an m×k and a k×n matrix in ``dtype`` (best of ``repeats``, after a warm-up)."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data (a smoke run)")
    parser.add_argument("--top", type=int, default=12, help="ops listed per precision")
    args = parser.parse_args(argv)
    size = dict(hidden=64, layers=2, vocab_size=512) if args.quick else dict(hidden=512, layers=9, vocab_size=8192)
    with tempfile.TemporaryDirectory(prefix="lit-lora-profile-") as work:
        rows = stdlib_rows(400 if args.quick else 540)
        data = write_jsonl(rows, Path(work) / "rows.jsonl")
        model_dir, params = build_model(rows, Path(work) / "model", **size)
        tokenizer, train = tokenised_rows(str(model_dir), str(data), 512, 8, 42)
        batch = median_batch(train, tokenizer)
        print(f"{params / 1e6:.1f}M parameters, batch {tuple(batch['input_ids'].shape)}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        for bf16 in (False, True):
            print(profile(peft_model(str(model_dir), tokenizer, 42), batch, bf16, args.top))


if __name__ == "__main__":
    main()
