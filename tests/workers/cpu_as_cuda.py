"""``lit-lora`` with Lightning's CUDA-only strategies running on CPU processes (tests only).

Lightning's ``DeepSpeedStrategy`` and ``FSDPStrategy`` refuse any accelerator but CUDA, while DeepSpeed
(its CPU accelerator) and torch's FSDP (given ``device_id=cpu``) run on CPU processes over gloo. This entry
point registers ``CPUAsCUDAAccelerator`` as Lightning's ``cuda`` accelerator: a ``CUDAAccelerator`` whose
devices are CPU processes, and ``fsdp_on_cpu`` adjusts the two places where a CPU run of FSDP needs other
arguments than Lightning gives. Everything else is the real code path of a GPU run: lit-lora's CLI and checks,
the strategy fragment from ``configs/strategies/``, Lightning's strategy and launcher, DeepSpeed's engine or
FSDP's units, checkpointing and the adapter save. What it cannot show is what only CUDA does (kernels, NCCL,
memory).

Arguments are ``lit-lora``'s::

    DS_ACCELERATOR=cpu python tests/workers/cpu_as_cuda.py fit --config configs/demo.yaml \\
        --config configs/strategies/deepspeed_zero3.yaml --trainer.devices 2 ...
"""

from __future__ import annotations

import os
import sys
from typing import Union

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator at import

import torch  # noqa: E402
from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator  # noqa: E402


class CPUAsCUDAAccelerator(CUDAAccelerator):
    """Lightning's CUDA accelerator with CPU devices: ``cpu:<local rank>`` instead of ``cuda:<local rank>``."""

    def setup_device(self, device: torch.device) -> None:
        pass  # nothing to select: every rank is a CPU process

    def setup(self, trainer) -> None:
        pass  # no CUDA_VISIBLE_DEVICES to log, no CUDA cache to clear

    def teardown(self) -> None:
        pass

    def get_device_stats(self, device) -> dict:
        return {}

    @staticmethod
    def parse_devices(devices: Union[int, str, list[int]]) -> list[int]:
        return list(devices) if isinstance(devices, (list, tuple)) else list(range(int(devices)))

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        # an index keeps code that reads ``root_device.index`` (DeepSpeed's device_rank) working
        return [torch.device("cpu", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True


def present_cpu_as_cuda() -> None:
    """``accelerator: gpu`` now selects ``CPUAsCUDAAccelerator`` (Lightning and lit-lora ask the same class)."""
    AcceleratorRegistry.register("cuda", CPUAsCUDAAccelerator, description="CPU processes as CUDA", override=True)
    CUDAAccelerator.is_available = staticmethod(lambda: True)


def fsdp_on_cpu() -> None:
    """torch's FSDP on CPU ranks under Lightning's ``FSDPStrategy``, which passes arguments meant for CUDA:

    * the device: Lightning gives the CUDA index (``root_device.index``), torch needs ``device_id=cpu`` there;
    * full state dicts: Lightning asks for ``offload_to_cpu=True``, where FSDP's copy to the CPU (``.cpu()``) is
      what keeps each gathered tensor: on CPU tensors it copies nothing, so the weights are read after they are
      freed (a segmentation fault) and each optimizer state aliases the next one gathered (Adam's ``exp_avg``
      saved as its ``exp_avg_sq``). Without offloading FSDP clones them instead.
    """
    import lightning.pytorch.strategies.fsdp as lightning_fsdp
    import torch.distributed.fsdp as fsdp

    wrap = fsdp.FullyShardedDataParallel.__init__

    def on_cpu(self, module, *args, device_id=None, **kwargs):
        wrap(self, module, *args, device_id=torch.device("cpu"), **kwargs)

    def full_state_dict_context(module, world_size: int, rank0_only: bool = True):
        kept = {"offload_to_cpu": False, "rank0_only": rank0_only}
        return fsdp.FullyShardedDataParallel.state_dict_type(
            module, fsdp.StateDictType.FULL_STATE_DICT, fsdp.FullStateDictConfig(**kept),
            fsdp.FullOptimStateDictConfig(**kept))

    if not hasattr(lightning_fsdp, "_get_full_state_dict_context"):
        raise RuntimeError("lightning.pytorch.strategies.fsdp._get_full_state_dict_context is gone: update fsdp_on_cpu")
    fsdp.FullyShardedDataParallel.__init__ = on_cpu
    lightning_fsdp._get_full_state_dict_context = full_state_dict_context


def exit_without_teardown(code: int) -> None:
    """Leave the process with ``code`` once the run is over, skipping interpreter teardown.

    On CPU, DeepSpeed's shared-memory communication op and gloo keep native threads that can abort a
    finished run at teardown ("terminate called without an active exception", exit -6) after every
    file was written. GPU runs (NCCL) do not have these threads; this worker alone needs the exit.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    present_cpu_as_cuda()
    fsdp_on_cpu()
    from lit_lora.cli import main

    try:
        main(sys.argv[1:])
    except SystemExit as stop:  # a refused config exits through here: keep its message and code
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        exit_without_teardown(stop.code if isinstance(stop.code, int) else (1 if stop.code else 0))
    exit_without_teardown(0)
