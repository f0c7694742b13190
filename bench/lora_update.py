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

import copy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from step_timing import (bench_llama, first_step_difference, interleaved, ratio_table, resolved,  # noqa: E402
                         step_arguments)

VARIANTS = ("peft", "fused")


def build(hidden: int, layers: int, vocab: int):
    """The two peft models on one random-init Llama, with equal weights (lora_B not zero)."""
    import torch
    from peft import get_peft_model

    from lit_lora.adapters import LoRA

    torch.manual_seed(0)
    base = bench_llama(hidden, layers, vocab)
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


def main(argv=None) -> None:
    args = resolved(step_arguments(__doc__.split("\n\n")[0]).parse_args(argv))

    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = build(args.hidden, args.layers, args.vocab)
    inputs = batch(args.batch, args.vocab, args.quick)
    loss_gap, grad_gap = first_step_difference([(models["peft"], inputs), (models["fused"], inputs)])
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} × "
          f"{inputs['input_ids'].shape[1]} tokens ({int(inputs['attention_mask'].sum())} not padding)")
    print(f"first step: |loss peft - loss fused| {loss_gap:.3g}, largest relative gradient difference {grad_gap:.3g}")
    optimizers = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-4)
                  for n, m in models.items()}

    def step(name: str) -> None:
        models[name](**inputs).loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()

    for name in VARIANTS:  # a warm-up step each (oneDNN primitives, the optimizer's state)
        step(name)
    times = interleaved({name: (lambda name=name: step(name)) for name in VARIANTS}, args.rounds, args.steps)
    print(ratio_table(times, "peft", "fused"))


if __name__ == "__main__":
    main()
