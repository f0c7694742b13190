"""One rank of a real DeepSpeed ZeRO run on CPU (gloo), driving lit-lora's model code as Lightning would.

Lightning's DeepSpeedStrategy refuses non-CUDA accelerators, but DeepSpeed itself runs on a CPU
(its CPU accelerator, gloo collectives). This worker reproduces what the strategy does with a
lit-lora module, so the ZeRO-specific parts are tested on any machine:

  1. ``configure_model`` inside ``deepspeed.zero.Init`` (Lightning's ZeRO-3 ``model_sharded_context``),
  2. ``deepspeed.initialize`` with a ZeRO config (the engine partitions and, with bf16, casts params),
  3. a few optimizer steps on one repeated batch, then ``module.save_pretrained`` on every rank;
     with ``resume_after`` the run is checkpointed as Lightning's strategy does it (through
     ``AtomicDirectorySave``, frozen weights excluded) and finished by a fresh engine loading it;
     with ``generate`` each rank then generates answers of a different length (evaluation under ZeRO-3).

The first loss is compared with the loss of the whole model before DeepSpeed saw it: DeepSpeed's
mixed-precision cast of floating-point 4-bit storage shows up there as a wrong model.

Run with ``torchrun``; the spec is JSON, the result is written by rank 0 as JSON::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/workers/zero_cpu.py \\
        '{"model": "<tiny llama dir>", "stage": 3, "adapter": "lora", "out": "/tmp/zero3"}'
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import deepspeed
import torch

from lit_lora.adapters import LoRA, QLoRA
from lit_lora.cluster.checkpoint_io import AtomicDirectorySave
from lit_lora.cluster.sharding import is_zero3_partitioned
from lit_lora.data.base import load_tokenizer
from lit_lora.evaluation.generation import GenerationSettings, generate_texts
from lit_lora.models.causal_lm import CausalLMModule

LORA = dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear")


def build_module(spec: dict) -> CausalLMModule:
    if spec["adapter"] == "lora":
        adapter = LoRA(**LORA)
    else:
        adapter = QLoRA(**LORA, bits=spec.get("bits", 4), quant_storage=spec.get("quant_storage"),
                        compute_dtype=spec.get("compute_dtype", "bfloat16"), gradient_checkpointing=False)
    return CausalLMModule(model_name_or_path=spec["model"], adapter=adapter, dtype=spec.get("dtype", "float32"))


class ProcessGroup:
    """What ``AtomicDirectorySave`` needs of a Lightning strategy, from ``torch.distributed``."""

    @property
    def is_global_zero(self) -> bool:
        return torch.distributed.get_rank() == 0

    def broadcast(self, obj):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, name=None) -> None:
        torch.distributed.barrier()


def start_engine(module: CausalLMModule, config: dict):
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=module.model, optimizer=torch.optim.AdamW(trainable, lr=1e-2),
                                      config=config)
    return engine


def train(engine, batch: torch.Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def main(spec: dict) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    # persistence threshold 0: even the tiny model's small tensors stay partitioned between uses,
    # as a real model's are, so an adapter saved without gathering would come out empty
    zero = {"stage": spec["stage"], "stage3_param_persistence_threshold": 0}
    config = {"train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True,
              "zero_optimization": zero, "bf16": {"enabled": spec.get("bf16", False)}}
    torch.manual_seed(0)
    batch = torch.randint(3, 100, (2, 16))
    module = build_module(spec)
    init = deepspeed.zero.Init(config_dict_or_path=config) if spec["stage"] == 3 else torch.device("cpu")
    with init:
        module.configure_model()
    built_partitioned = is_zero3_partitioned(module.model)
    with torch.no_grad():  # the whole model before DeepSpeed touches it
        reference_loss = module.model(input_ids=batch, labels=batch).loss.item()
    engine = start_engine(module, config)
    engine_partitioned = is_zero3_partitioned(module.model)
    steps, stop = spec.get("steps", 3), spec.get("resume_after")
    losses = train(engine, batch, stop or steps)
    if stop is not None:  # checkpoint as Lightning's DeepSpeedStrategy does, then resume in a fresh engine
        checkpoint = Path(spec["out"]) / "hpc_ckpt_1.ckpt"
        AtomicDirectorySave(lambda state, path, _: engine.save_checkpoint(
            path, client_state=state, tag="checkpoint", exclude_frozen_parameters=True), ProcessGroup())(
            {"global_step": stop}, checkpoint)
        torch.manual_seed(1)  # a different fresh adapter: only the checkpoint can make the runs agree
        module = build_module(spec)
        with init:
            module.configure_model()
        engine = start_engine(module, config)
        _, client_state = engine.load_checkpoint(str(checkpoint), tag="checkpoint", load_module_strict=False,
                                                 load_lr_scheduler_states=False)
        assert client_state["global_step"] == stop
        losses += train(engine, batch, steps - stop)
    if spec.get("generate"):  # answers of different lengths per rank: rank 0 stops first
        settings = GenerationSettings(max_new_tokens=2 + 6 * rank)
        tokenizer = load_tokenizer(spec["model"])
        answers = generate_texts(module.model, tokenizer, ["def add(a, b):", "Hello"], settings)
        lengths = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(lengths, [(settings.max_new_tokens, a.hit_limit) for a in answers])
    module.save_pretrained(spec["out"])  # every rank: gathers under ZeRO-3, then rank 0 writes
    if rank == 0:
        module.model.save_pretrained(Path(spec["out"]) / "ungathered")  # the control: rank 0's shards as they are
        result = dict(built_partitioned=built_partitioned, engine_partitioned=engine_partitioned,
                      reference_loss=reference_loss, losses=losses, world_size=torch.distributed.get_world_size(),
                      generated_lengths=lengths if spec.get("generate") else None)
        (Path(spec["out"]) / "result.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown, where DeepSpeed's and gloo's native threads can abort the process
