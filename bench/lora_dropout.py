"""One LoRA training step with LoRA dropout drawn by torch (``bernoulli_``) against lit-lora's CPU dropout
(``lit_lora/adapters/cpu_dropout.py``), and without dropout, same model, same batch, interleaved rounds.

    python bench/lora_dropout.py                 # the training bench's CPU model, dropout 0.05, 5 rounds
    python bench/lora_dropout.py --dropout 0.1
    python bench/lora_dropout.py --quick         # smoke run: hidden 64, 2 layers, 1 round of 1 step

The model and batch are ``lora_update.py``'s (random-init Llama, LoRA r=16, alpha 32 on every linear layer,
8 rows of 100-200 tokens), wrapped three times by ``lit_lora.adapters.LoRA`` with equal weights: ``torch``
with peft's dropout modules swapped for a subclass of ``nn.Dropout`` (lit-lora stands in only for peft's own
``nn.Dropout``, so torch's ``bernoulli_`` mask runs), ``lit-lora`` as lit-lora trains, and ``none`` with
dropout 0, what the step costs without any. Both dropouts drop the same share of elements with the same
scaling but draw other masks, so their losses differ by the noise of dropout; the report prints each first
loss next to the one without dropout.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from lora_update import batch  # noqa: E402
from step_timing import bench_llama, interleaved, ratio_table, resolved, step_arguments  # noqa: E402

VARIANTS = ("torch", "lit-lora", "none")


def build(hidden: int, layers: int, vocab: int, dropout: float) -> dict:
    """The three LoRA models on one random-init Llama, with equal weights (lora_B not zero)."""
    import copy

    import torch

    from lit_lora.adapters import LoRA

    class TorchDropout(torch.nn.Dropout):
        """peft's dropout as torch draws it: a subclass, which lit-lora's CPU dropout leaves alone."""

    torch.manual_seed(0)
    base = bench_llama(hidden, layers, vocab)
    models = {name: LoRA(r=16, alpha=32, dropout=0.0 if name == "none" else dropout,
                         target_modules="all-linear").wrap(copy.deepcopy(base), "CAUSAL_LM") for name in VARIANTS}
    with torch.no_grad():
        for name, param in models["none"].named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    for model in models.values():
        model.load_state_dict(models["none"].state_dict())
        model.train()
    for module in models["torch"].modules():
        for name, child in list(getattr(module, "lora_dropout", {}).items()):
            if isinstance(child, torch.nn.Dropout):  # dropout 0: peft's nn.Identity, nothing to swap
                module.lora_dropout[name] = TorchDropout(child.p)
    assert any(isinstance(m, TorchDropout) for m in models["torch"].modules()) or dropout == 0
    return models


def main(argv=None) -> None:
    parser = step_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout of the torch and lit-lora variants")
    args = resolved(parser.parse_args(argv))

    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = build(args.hidden, args.layers, args.vocab, args.dropout)
    inputs = batch(args.batch, args.vocab, args.quick)
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} × "
          f"{inputs['input_ids'].shape[1]} tokens ({int(inputs['attention_mask'].sum())} not padding); "
          f"dropout {args.dropout}")
    optimizers = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-4)
                  for n, m in models.items()}
    first_losses = {}

    def step(name: str) -> None:
        torch.manual_seed(0)  # the same draws in every variant and step
        loss = models[name](**inputs).loss
        first_losses.setdefault(name, loss.item())
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()

    for name in VARIANTS:  # a warm-up step each (oneDNN primitives, the optimizer's state)
        step(name)
    print("first loss: " + ", ".join(f"{name} {loss:.5f}" for name, loss in first_losses.items()))
    times = interleaved({name: (lambda name=name: step(name)) for name in VARIANTS}, args.rounds, args.steps)
    print(ratio_table(times, "torch", "lit-lora"))
    print(ratio_table(times, "lit-lora", "none"))


if __name__ == "__main__":
    main()
