"""One LoRA training step with peft's ``lora.Linear`` against lit-lora's ``FusedLoraLinear`` (the update added
inside its matrix product), same model, same batch, interleaved rounds.

    python bench/lora_update.py            # the training bench's CPU model (hidden 512, 9 layers), batch 8, 5 rounds
    python bench/lora_update.py --quick    # smoke run: hidden 64, 2 layers, 1 round of 1 step

The model is a random-init ``LlamaForCausalLM`` (hidden ``--hidden``, MLP twice that, 4 heads / 2 KV heads,
vocabulary 8,192, sdpa attention) with LoRA r=16, alpha 32, dropout 0 on every linear layer, built twice from
the same weights: once with peft's layers, once with ``FusedLoraLinear`` (``lit_lora.adapters.LoRA`` registers
it). A step is the forward of ``--batch`` rows of 100-200 tokens (right padding, the first 40 tokens of each
row without a label, as a prompt), backward, and ``torch.optim.AdamW``. Each round times ``--steps`` steps of
one variant, then of the other, alternating which goes first; the report gives every round, the medians, the
median same-round ratio (peft ÷ fused step time), and how far apart the two variants' first losses and
gradients are (0 when ``alpha / r`` is a power of two).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from tables import fmt, table  # noqa: E402

VARIANTS = ("peft", "fused")


def build(hidden: int, layers: int, vocab: int):
    """The two peft models on one random-init Llama, with equal weights (lora_B not zero)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lit_lora.adapters import LoRA

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    lora = LoRA(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    models = {"peft": get_peft_model(copy.deepcopy(base), lora.peft_config("CAUSAL_LM")),  # peft's own layers
              "fused": lora.wrap(base, "CAUSAL_LM")}
    with torch.no_grad():
        for name, param in models["peft"].named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    models["fused"].load_state_dict(models["peft"].state_dict())
    assert any(type(m).__name__ == "FusedLoraLinear" for m in models["fused"].modules())
    assert not any(type(m).__name__ == "FusedLoraLinear" for m in models["peft"].modules())
    return models


def batch(rows: int, vocab: int, short: bool):
    import torch

    generator = torch.Generator().manual_seed(0)
    low, high = (20, 40) if short else (100, 200)
    lengths = torch.randint(low, high, (rows,), generator=generator).tolist()
    ids = torch.randint(0, vocab, (rows, max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :min(40, low // 2)] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def first_step_difference(models: dict, inputs: dict) -> tuple[float, float]:
    """|loss difference| and the largest gradient difference relative to the gradient's own largest value."""
    losses, grads = {}, {}
    for name, model in models.items():
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
    worst = max(float((grads["fused"][n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
                for n, g in grads["peft"].items())
    return abs(losses["fused"] - losses["peft"]), worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 round of 1 step")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 512; --quick 64)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default 9; --quick 2)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and round (default 3)")
    args = parser.parse_args(argv)
    quick = args.quick
    hidden, layers = args.hidden or (64 if quick else 512), args.layers or (2 if quick else 9)
    rounds, steps = args.rounds or (1 if quick else 5), args.steps or (1 if quick else 3)
    vocab = 512 if quick else 8192

    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = build(hidden, layers, vocab)
    inputs = batch(args.batch, vocab, quick)
    loss_gap, grad_gap = first_step_difference(models, inputs)
    print(f"model: hidden {hidden}, {layers} layers, vocab {vocab}; batch {args.batch} × {inputs['input_ids'].shape[1]}"
          f" tokens ({int(inputs['attention_mask'].sum())} not padding)")
    print(f"first step: |loss peft - loss fused| {loss_gap:.3g}, largest relative gradient difference {grad_gap:.3g}")
    optimizers = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-4)
                  for n, m in models.items()}
    for name, model in models.items():  # a warm-up step each (oneDNN primitives, the optimizer's state)
        model(**inputs).loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
    times = {name: [] for name in VARIANTS}
    for round_index in range(rounds):
        for name in (VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]):
            started = time.perf_counter()
            for _ in range(steps):
                models[name](**inputs).loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad()
            times[name].append((time.perf_counter() - started) / steps)
    rows = [["round", "peft s/step", "fused s/step", "peft ÷ fused"]]
    rows += [[str(i + 1), fmt(p, ".3f"), fmt(f, ".3f"), fmt(p / f, ".2f")]
             for i, (p, f) in enumerate(zip(times["peft"], times["fused"]))]
    ratios = [p / f for p, f in zip(times["peft"], times["fused"])]
    rows.append(["median", fmt(statistics.median(times["peft"]), ".3f"), fmt(statistics.median(times["fused"]), ".3f"),
                 fmt(statistics.median(ratios), ".2f")])
    print(table(rows))


if __name__ == "__main__":
    main()
