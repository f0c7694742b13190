"""The LightningModule a config's ``model`` section describes, built without weights.

``lit-lora estimate`` (``commands/experiment.py`` with ``build="model"``) needs the module a ``fit`` would
build, without loading or training anything::

    from lit_lora.models.from_config import module_from_config
    module = module_from_config({"class_path": "lit_lora.models.CausalLMModule",
                                 "init_args": {"model_name_or_path": "lit_lora/assets/tiny-llama"}})
    module.configure_model()    # the weights load here, as in fit
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from jsonargparse import ArgumentParser

from lit_lora.models.base import FineTuneModule


def module_from_config(model_config: Any):
    """The LightningModule of a config's ``model`` section (``class_path`` / ``init_args``); its ``__init__``
    loads no weights (``configure_model`` does)."""
    as_dict = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FineTuneModule, "model")
    return parser.instantiate(parser.parse_object({"model": as_dict})).model


def link_label_names(module, data_class_path: Optional[str]) -> None:
    """The label names the CLI links from the datamodule (``data.label_names``) when the module has none: read
    from the datamodule class, which defines them, without building it."""
    if not hasattr(module, "label_names") or module.label_names or not data_class_path:
        return
    package, _, name = data_class_path.rpartition(".")
    names = getattr(getattr(importlib.import_module(package), name), "label_names", None)
    if names:
        module.label_names = list(names)
