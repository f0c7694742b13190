"""``lit-lora estimate``: parameters and GPU memory of a config, without weights or a download.

    lit-lora estimate --config configs/code/gemma2b_qlora_python_codes.yaml --gpu_memory_gib 24
    lit-lora estimate --config configs/demo.yaml --model.init_args.model_name_or_path microsoft/phi-2

The config is read as ``fit`` reads it (``lit_lora.commands.experiment``, any fragment and ``--key value``
override included), with only the module built (it loads nothing) and no hardware checks: the machine that
estimates need not be the one that trains. The model is built on the meta device by the builder training uses
(``lit_lora.estimate.build``); the options below join the parser.

With a strategy fragment and a device count (``--config configs/strategies/deepspeed_zero3.yaml --trainer.devices
4``) the numbers are what one of the devices holds (``lit_lora.memory.Sharding``). A method / strategy /
quantisation combination that ``fit`` refuses is refused here too, with fit's message (a GPU is assumed: the
machine that estimates need not have one).

The exit status is 1 when the total does not fit in ``--gpu_memory_gib`` (the report is printed either way),
so a script queues only what fits::

    lit-lora estimate --config configs/<exp>.yaml --gpu_memory_gib 40 \\
        && sbatch slurm/single_node.sbatch configs/<exp>.yaml
"""

from __future__ import annotations

import sys
from typing import Optional

from lit_lora.commands.experiment import load_experiment
from lit_lora.estimate import build, data_settings, generation_call, memory_estimate, report
from lit_lora.memory import GIB


def add_arguments(parser) -> None:
    """The command's options; a value out of range (a batch of -4 gave negative activations) is a parser error."""
    from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt

    parser.add_argument("--gpu_memory_gib", type=PositiveFloat, default=80.0,
                        help="GPU memory to check the total against; exit status 1 when the total does not fit")
    parser.add_argument("--batch_size", type=Optional[PositiveInt], default=None,
                        help="per-device batch size (default: data.batch_size; for a config that trains "
                             "nothing, the rows of its largest generate call)")
    parser.add_argument("--seq_len", type=Optional[PositiveInt], default=None,
                        help="tokens per row (default: the data's max length)")
    parser.add_argument("--overhead_gib", type=NonNegativeFloat, default=1.0,
                        help="CUDA context and allocator slack")


def check(config) -> None:
    """Refuse what ``fit`` refuses when it reads the config (``compatibility.check_config``), on a GPU machine."""
    from lit_lora.compatibility import check_config

    check_config(config, cuda_available=True)


def main(argv: Optional[list[str]] = None) -> None:
    experiment = load_experiment(sys.argv[1:] if argv is None else list(argv), add_arguments, check=check,
                                 build="model", prog="lit-lora estimate")
    options, module = experiment.config, experiment.module
    built = build(module)
    data = data_settings(options)
    batch = options.batch_size or data["batch_size"]
    seq = options.seq_len or data["seq"]
    target = options.seq_len or data["target_seq"]
    call = generation_call(module, seq) if built.trainable == 0 else None
    if call and not options.batch_size:  # nothing trains: its largest batch is a generate call's
        batch, seq = call
    estimate, assumptions = memory_estimate(built, module, options, batch, seq, target, options.overhead_gib)
    print(report(module, built, estimate, assumptions, options.gpu_memory_gib))
    if not estimate.fits(options.gpu_memory_gib * GIB):
        print(f"[lit-lora] the estimate exceeds --gpu_memory_gib {options.gpu_memory_gib:g}: exit status 1",
              file=sys.stderr)
        sys.exit(1)
