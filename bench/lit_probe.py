"""A Lightning callback that measures a ``lit-lora fit`` run for the benches (see ``bench/measure.py``).

    PYTHONPATH=bench BENCH_RESULT=/tmp/r.json lit-lora fit --config configs/demo.yaml \
        --trainer.callbacks+=lit_probe.Probe ...

Step ``k`` starts at ``on_train_batch_start`` (its batch fetched and on the device) and ends at
``on_train_batch_end`` (after the optimizer step). The result is written at the end of the last step,
before Lightning saves a checkpoint or lit-lora exports the adapter. Under ``attn_implementation: torch_varlen`` it
also reports how many attention calls on packed rows ran the varlen kernel and how many fell back to sdpa, and why
(``attention_paths``; not under ``compile: true``, whose layers count nothing), so a bench never labels sdpa's
speed as the kernel's.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from lit_lora.models import varlen_attention
from measure import StepMeter, label_count, token_counts, write_result


class Probe(Callback):
    def __init__(self) -> None:
        self.meter: StepMeter | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.meter = StepMeter(trainer.max_steps, cuda=pl_module.device.type == "cuda")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.meter.step_begin(trainer.global_step + 1, token_counts(batch), label_count(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # already counts this batch's optimizer step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.meter.step_end(step, loss)
        if step == trainer.max_steps and trainer.is_global_zero:
            datamodule = trainer.datamodule
            attention = getattr(getattr(pl_module.model, "config", None), "_attn_implementation", None)
            write_result(self.meter.result(
                tool="lit-lora",
                packing=bool(getattr(datamodule, "packing", False)),
                group_by_length=bool(getattr(datamodule, "group_by_length", False)),
                attention=attention,
                attention_paths=dict(varlen_attention.PACKED_FORWARDS)  # compiled layers count nothing
                if attention == varlen_attention.NAME and not getattr(pl_module, "compile_layers", False) else None,
                train_rows=len(datamodule.datasets["train"]) if getattr(datamodule, "datasets", None) else None,
            ))
