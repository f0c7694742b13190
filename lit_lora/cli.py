"""The ``lit-lora`` command: a LightningCLI with fit / validate / test / predict.

    lit-lora fit --config configs/demo.yaml
    lit-lora fit --config configs/demo.yaml --print_config > my.yaml   # a config --config accepts back
    lit-lora test --config configs/demo.yaml --ckpt_path runs/demo/.../checkpoints/last.ckpt

The tokenizer name follows ``model.init_args.model_name_or_path`` and the tokenizer object built by
the datamodule is handed to the model (``link_arguments``): neither is repeated in a YAML.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.cli import LightningCLI

from lit_lora.callbacks import AdapterCheckpoint, BaselineComparison, FinalExport, MetricsWriter
from lit_lora.compatibility import check_config
from lit_lora.data.base import TextDataModule
from lit_lora.launch_checks import check_allocation
from lit_lora.models.base import FineTuneModule
from lit_lora.preemption import PreemptionCheckpoint, pin_log_dir
from lit_lora.tracking import WandbRun, fill_save_dirs


class LitLoraCLI(LightningCLI):
    """LightningCLI over every lit-lora module and datamodule, with the export callbacks always on."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(FineTuneModule, TextDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AdapterCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FinalExport, "export")
        parser.add_lightning_class_args(BaselineComparison, "baseline")
        parser.add_lightning_class_args(MetricsWriter, "metrics")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer", apply_on="instantiate")
        # class names of classification data; skipped for a datamodule / module without label_names
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Fail on an impossible strategy / method combination or a mismatched SLURM allocation, early."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.trainer
        check_config(config)
        check_allocation(trainer.num_nodes, trainer.devices, accelerator=trainer.accelerator)
        fill_save_dirs(trainer)
        pin_log_dir(trainer)

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbRun):
                logger.log_config(self.config.get(self.subcommand))


def configure_logging() -> None:
    logger = logging.getLogger("lit_lora")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# Subcommands that are not Trainer methods, dispatched before LightningCLI sees the arguments.
EXTRA_COMMANDS = {
    "compare": "lit_lora.compare",    # base model vs fine-tuned model report
    "estimate": "lit_lora.estimate",  # parameters and memory from the architecture alone
    "incontext": "lit_lora.evaluation.incontext",  # zero- / k-shot prompting, no training
}


def main(args: list[str] | None = None) -> None:
    configure_logging()
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        import importlib

        importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
        return
    LitLoraCLI(args=args)


if __name__ == "__main__":
    main()
