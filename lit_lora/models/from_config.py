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
    names = getattr(class_of(data_class_path), "label_names", None)
    if names:
        module.label_names = list(names)


def check_model_kind(model_config: Any) -> None:
    """Refuse a model the module's head cannot load (a Llama under the T5 module, a T5 under the causal-LM one)
    before anything is tokenised; the error names the modules that load it. Models with remote code and hub ids
    not downloaded yet are left to ``from_pretrained``."""
    from pathlib import Path

    from transformers import AutoConfig

    from lit_lora.errors import IncompatibleConfig
    from lit_lora.model_source import in_hub_cache, resolve_model_path

    args = (model_config.get("init_args") or {}) if model_config is not None else {}
    module_class = class_of(model_config.get("class_path") or "") if model_config is not None else None
    auto = getattr(module_class, "auto_model_class", None)
    name = args.get("model_name_or_path")
    if auto is None or not name or args.get("trust_remote_code"):
        return
    path = resolve_model_path(name)
    if not Path(path).is_dir() and not in_hub_cache(path):
        return
    config = AutoConfig.from_pretrained(path, local_files_only=True)  # a directory, or the hub cache: no request
    if type(config) in auto._model_mapping:
        return
    fits = [f"lit_lora.models.{c.__name__}" for c in module_classes()
            if type(config) in c.auto_model_class._model_mapping]
    raise IncompatibleConfig(
        f"model_name_or_path {name}: a {config.model_type} model, which {module_class.__name__} cannot load "
        f"({auto.__name__})" + (f"; it loads under {', '.join(fits)} (model.class_path)" if fits else ""))


def class_of(class_path: str) -> Optional[type]:
    """The class a config's ``class_path`` names, or None where it names none (imported, as jsonargparse would)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def module_classes() -> list[type]:
    """lit-lora's LightningModules, one per head."""
    import lit_lora.models as models

    return [c for c in vars(models).values() if isinstance(c, type) and issubclass(c, FineTuneModule)
            and getattr(c, "auto_model_class", None) is not None]
