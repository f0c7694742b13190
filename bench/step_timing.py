"""Two variants of one training step, timed in one process, interleaved: what ``lora_update.py`` and
``causal_mask.py`` share (their CPU model, their arguments, the rounds and the report).

    >>> from step_timing import ratio_table
    >>> print(ratio_table({"a": [2.0, 2.2], "b": [1.0, 1.0]}, "a", "b"))
    round   a s/step  b s/step  a ÷ b
    ------  --------  --------  -----
    1          2.000     1.000   2.00
    2          2.200     1.000   2.20
    median     2.100     1.000   2.10
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

from tables import fmt, table


def step_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 round of 1 step")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 512; --quick 64)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default 9; --quick 2)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and round (default 3)")
    return parser


def resolved(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on ``--quick`` filled in, and the vocabulary (8,192; 512 quick)."""
    quick = args.quick
    return argparse.Namespace(**{**vars(args), "hidden": args.hidden or (64 if quick else 512),
                                 "layers": args.layers or (2 if quick else 9),
                                 "rounds": args.rounds or (1 if quick else 5),
                                 "steps": args.steps or (1 if quick else 3), "vocab": 512 if quick else 8192})


def bench_llama(hidden: int, layers: int, vocab: int):
    """The training bench's CPU model shape, random init, sdpa attention."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def interleaved(steps_of: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round; the variants' order flips every round."""
    names = list(steps_of)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            started = time.perf_counter()
            for _ in range(steps):
                steps_of[name]()
            times[name].append((time.perf_counter() - started) / steps)
    return times


def ratio_table(times: dict[str, list[float]], slow: str, fast: str) -> str:
    """Every round's seconds per step and ``slow ÷ fast``, then the medians (of the same-round ratios)."""
    rows = [["round", f"{slow} s/step", f"{fast} s/step", f"{slow} ÷ {fast}"]]
    rows += [[str(i + 1), fmt(s, ".3f"), fmt(f, ".3f"), fmt(s / f, ".2f")]
             for i, (s, f) in enumerate(zip(times[slow], times[fast]))]
    ratios = [s / f for s, f in zip(times[slow], times[fast])]
    rows.append(["median", fmt(statistics.median(times[slow]), ".3f"), fmt(statistics.median(times[fast]), ".3f"),
                 fmt(statistics.median(ratios), ".2f")])
    return table(rows)


def first_step_difference(runs: list[tuple]) -> tuple[float, float]:
    """Two ``(model, inputs)`` forward + backward runs: |loss difference| and the largest gradient difference
    relative to that gradient's own largest value (the gradients cleared after)."""
    losses, grads = [], []
    for model, inputs in runs:
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    worst = max(float((grads[1][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)) for n, g in grads[0].items())
    return abs(losses[1] - losses[0]), worst
