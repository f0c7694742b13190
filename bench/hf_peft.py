"""The non-lit-lora contenders of ``bench/train_throughput.py``, one per process: HF Trainer + PEFT, and a plain loop.

    BENCH_RESULT=/tmp/r.json python bench/hf_peft.py hf --model DIR --data rows.jsonl --steps 60

``hf``          peft ``get_peft_model`` + ``transformers.Trainer``, ``DataCollatorForSeq2Seq`` dynamic padding
                (labels padded with -100), the Trainer's default random order;
``hf_grouped``  the same with length-grouped batches (``train_sampling_strategy="group_by_length"``, which is
                what ``group_by_length=True`` became in transformers 5; the older flag is used where it exists);
``hf_flatten``  the same order with ``DataCollatorWithFlattening`` (padding-free: one row per batch, positions
                restart at every example, no attention across examples);
``plain``       the same peft model and rows in a hand-written PyTorch loop: dynamic padding, the HF default
                order (``torch.randperm`` with a generator seeded by ``seed``, which is what accelerate's
                ``SeedableRandomSampler`` draws), ``torch.optim.AdamW``, gradient clipping, no framework;
``plain_grouped`` the same loop over lit-lora's length-grouped batches (``lit_lora.data.length_grouping``, seeded
                ``seed + epoch`` as ``lit-lora fit`` seeds it): the batches of lit-lora's default, without lit-lora;
``plain_hf_grouped`` the same loop over transformers' ``LengthGroupedSampler`` (a generator seeded ``seed + epoch``;
                the Trainer's draws from the global RNG instead, so its batches are others of the same kind).

``--bf16``: bfloat16 mixed precision, as ``--trainer.precision bf16-mixed`` is in lit-lora: the Trainer's
``bf16=True`` (``torch.autocast``), and ``torch.autocast(device, torch.bfloat16)`` around the plain loop's forward.
``--dtype bfloat16``: the frozen base weights loaded in bfloat16, as lit-lora's ``--model.init_args.dtype bfloat16``.
``--lora-dropout 0.05``: LoRA dropout, as lit-lora's ``--model.init_args.adapter.init_args.dropout``.
``--compile``: the Trainer's ``torch_compile=True`` (it compiles the whole model), against lit-lora's
``--model.init_args.compile true``.

Rows are tokenised by lit-lora's own ``InstructionDataModule`` (same split, tokens and labels as ``lit-lora fit``);
measurement is ``bench/measure.py``'s, written to ``$BENCH_RESULT``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import torch

from measure import StepMeter, token_counts, write_result

CONTENDERS = ("hf", "hf_grouped", "hf_flatten", "plain", "plain_grouped", "plain_hf_grouped")
COLUMNS = ["input_ids", "attention_mask", "labels"]


def tokenised_rows(model_dir: str, data: str, max_length: int, batch_size: int, seed: int):
    """lit-lora's tokenizer (pad = EOS where there is none) and its tokenised training split."""
    from lit_lora.data import InstructionDataModule

    datamodule = InstructionDataModule(source=data, max_length=max_length, batch_size=batch_size, seed=seed,
                                       tokenizer_name_or_path=model_dir)
    datamodule.setup("fit")
    return datamodule.tokenizer, datamodule.datasets["train"].select_columns(COLUMNS)


def peft_model(model_dir: str, tokenizer, seed: int, r: int = 16, alpha: int = 32, dtype: str = "float32",
               dropout: float = 0.0):
    """The base model (weights in ``dtype``) with LoRA on every linear layer, as the peft docs build it (peft keeps
    the adapter weights in float32)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.config.pad_token_id = tokenizer.pad_token_id
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class Recording:
    """A collator that also records each batch's token counts, in the order the batches are made."""

    def __init__(self, collate):
        self.collate = collate
        self.counts: list = []

    def __call__(self, rows):
        batch = self.collate(rows)
        self.counts.append(token_counts(batch))
        return batch


def sampling_kwargs(grouped: bool) -> dict:
    """Length-grouped sampling in the installed transformers' words."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "group_by_length" in fields:
        return {"group_by_length": grouped}
    return {"train_sampling_strategy": "group_by_length" if grouped else "random"}


def run_trainer(kind: str, args, meter: StepMeter) -> dict:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainerCallback, \
        TrainingArguments

    tokenizer, train = tokenised_rows(args.model, args.data, args.max_length, args.batch_size, args.seed)
    model = peft_model(args.model, tokenizer, args.seed, dtype=args.dtype, dropout=args.lora_dropout)
    if kind == "hf_flatten":
        collate = Recording(DataCollatorWithFlattening())
    else:
        collate = Recording(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))

    class Probe(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            step = state.global_step + 1
            meter.step_begin(step, collate.counts[step - 1])

        def on_step_end(self, targs, state, control, **kwargs):
            meter.step_end(state.global_step)

        def on_log(self, targs, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                meter.record_loss(state.global_step, logs["loss"])

    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0, use_cpu=args.device == "cpu",
        bf16=args.bf16, torch_compile=args.compile, seed=args.seed, **sampling_kwargs(kind == "hf_grouped"))
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collate,
                      processing_class=tokenizer, callbacks=[Probe()])
    trainer.train()
    return {"tool": "transformers.Trainer", "optimizer": training_args.optim, "train_rows": len(train)}


def pad_batch(rows: list[dict], pad_token_id: int) -> dict:
    """Right-pad a list of tokenised rows to the longest (labels with -100, attention mask with 0)."""
    longest = max(len(r["input_ids"]) for r in rows)
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100}
    return {key: torch.tensor([list(r[key]) + [fill] * (longest - len(r[key])) for r in rows])
            for key, fill in fills.items()}


def epoch_order(train, args, grouping: str, epoch: int) -> list[int]:
    """The HF Trainer's random order (``""``: epoch 0; later epochs reuse it), or a length-grouped one:
    lit-lora's (``"lit-lora"``) or transformers' sampler (``"transformers"``)."""
    lengths = [len(ids) for ids in train["input_ids"]]
    if grouping == "lit-lora":
        from lit_lora.data.length_grouping import LengthGroupedSampler

        sampler = LengthGroupedSampler(train, lengths, args.batch_size, seed=args.seed)
        sampler.set_epoch(epoch)
        return list(sampler)
    if grouping == "transformers":
        from transformers.trainer_pt_utils import LengthGroupedSampler as TransformersSampler

        generator = torch.Generator().manual_seed(args.seed + epoch)
        return list(TransformersSampler(args.batch_size, lengths=lengths, generator=generator))
    return torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()


GROUPING = {"plain": "", "plain_grouped": "lit-lora", "plain_hf_grouped": "transformers"}


def run_plain(args, meter: StepMeter, grouping: str = "") -> dict:
    tokenizer, train = tokenised_rows(args.model, args.data, args.max_length, args.batch_size, args.seed)
    model = peft_model(args.model, tokenizer, args.seed, dtype=args.dtype,
                       dropout=args.lora_dropout).to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    model.train()
    step, epoch = 0, 0
    while step < args.steps:  # epochs, should the rows run out
        loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size,
                                             sampler=epoch_order(train, args, grouping, epoch),
                                             collate_fn=lambda rows: pad_batch(rows, tokenizer.pad_token_id))
        epoch += 1
        for batch in loader:
            step += 1
            batch = {k: v.to(args.device) for k, v in batch.items()}
            meter.step_begin(step, token_counts(batch))
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.step_end(step, loss.detach())
            if step == args.steps:
                break
    return {"tool": "plain PyTorch", "optimizer": "torch.optim.AdamW", "train_rows": len(train)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=CONTENDERS)
    parser.add_argument("--model", required=True, help="model directory (weights + tokenizer)")
    parser.add_argument("--data", required=True, help="JSONL rows in the python-codes-25k schema")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=42, help="model seed and data order (lit-lora's data.seed default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (autocast)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="base weights' dtype")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (peft's lora_dropout)")
    parser.add_argument("--compile", action="store_true", help="the Trainer's torch_compile=True (Trainer kinds)")
    parser.add_argument("--output-dir", default="hf-bench-output", help="Trainer output_dir (nothing is saved)")
    args = parser.parse_args(argv)
    meter = StepMeter(args.steps, cuda=args.device.startswith("cuda"))
    if args.kind in GROUPING:
        extra = run_plain(args, meter, grouping=GROUPING[args.kind])
    else:
        extra = run_trainer(args.kind, args, meter)
    write_result(meter.result(contender=args.kind, **extra))


if __name__ == "__main__":
    main()
