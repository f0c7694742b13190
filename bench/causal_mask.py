"""One LoRA training step on right-padded batches, with the padding mask against the causal mask alone
(``lit_lora/models/causal_mask.py``: what ``CausalLMModule`` runs), same model, same batches, interleaved rounds.

    python bench/causal_mask.py            # the training bench's CPU model (hidden 512, 9 layers), batch 8, 5 rounds
    python bench/causal_mask.py --quick    # smoke run: hidden 64, 2 layers, 1 round of 1 step

The model is a random-init ``LlamaForCausalLM`` (hidden ``--hidden``, MLP twice that, 4 heads / 2 KV heads,
vocabulary 8,192, sdpa attention) with lit-lora's LoRA r=16, alpha 32, dropout 0 on every linear layer. Two
batches of ``--batch`` rows, right-padded: ``grouped``, 270-300 tokens (what length grouping hands a step), and
``random``, lengths drawn from 50 to 500 (random order); the first 40 tokens of each row (25 in ``random``) have
no label (a prompt). A step is the forward (the model's own loss), backward and ``torch.optim.AdamW``;
``mask`` passes ``attention_mask``, ``causal`` passes what ``without_redundant_mask`` leaves (no mask). Each round
times ``--steps`` steps of one variant, then of the other, alternating which goes first; the report gives every
round, the medians, the median same-round ratio (mask ÷ causal step time) and how far apart the two variants'
first losses and gradients are.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from step_timing import (bench_llama, first_step_difference, interleaved, ratio_table, resolved,  # noqa: E402
                         step_arguments)

VARIANTS = ("mask", "causal")


def build(hidden: int, layers: int, vocab: int):
    import torch

    from lit_lora.adapters import LoRA

    torch.manual_seed(0)
    return LoRA(r=16, alpha=32, dropout=0.0, target_modules="all-linear").wrap(bench_llama(hidden, layers, vocab),
                                                                                 "CAUSAL_LM")


def batch(rows: int, vocab: int, lengths_range: tuple[int, int], seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(*lengths_range, (rows,), generator=generator)
    ids = torch.randint(0, vocab, (rows, int(lengths.max())), generator=generator)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :min(40, lengths_range[0] // 2)] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "use_cache": False}


def step_inputs(model, inputs: dict) -> dict:
    from lit_lora.models.causal_mask import without_redundant_mask

    causal = without_redundant_mask(inputs, model)
    assert "attention_mask" not in causal, "lit-lora kept the padding mask of a right-padded batch"
    return {"mask": inputs, "causal": causal}


def main(argv=None) -> None:
    args = resolved(step_arguments(__doc__.split("\n\n")[0]).parse_args(argv))

    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = build(args.hidden, args.layers, args.vocab)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, LoRA r=16 on every linear layer")
    longest = 64 if args.quick else 500
    kinds = {"grouped": (int(longest * 0.54), int(longest * 0.6) + 1),  # ~300 tokens within 10%
             "random": (longest // 10, longest + 1)}
    for kind, lengths in kinds.items():
        inputs = batch(args.batch, args.vocab, lengths, seed=len(kind))
        variants = step_inputs(model, inputs)
        mask = inputs["attention_mask"]
        loss_gap, grad_gap = first_step_difference([(model, variants["mask"]), (model, variants["causal"])])
        print(f"\n{kind} batch: {args.batch} × {mask.shape[1]} tokens, {1 - mask.float().mean().item():.1%} padding; "
              f"first step: |loss mask - loss causal| {loss_gap:.3g}, largest relative gradient difference "
              f"{grad_gap:.3g}")

        def step(name: str) -> None:
            model(**variants[name]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        for name in VARIANTS:  # a warm-up step each (oneDNN primitives, the optimizer's state)
            step(name)
        times = interleaved({name: (lambda name=name: step(name)) for name in VARIANTS}, args.rounds, args.steps)
        print(f"{kind}:\n{ratio_table(times, 'mask', 'causal')}")


if __name__ == "__main__":
    main()
