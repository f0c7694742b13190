"""Sharded models: loading under ZeRO-3, full weights for export, and the device a rank evaluates on.

DeepSpeed ZeRO-3 and FSDP keep only a shard per rank.

Saving ``model.save_pretrained`` on rank 0 alone under ZeRO-3 writes empty tensors, and under FSDP
it hangs (FSDP's state_dict is a collective). ``gathered_state_dict`` is called on *every* rank and
returns the full state dict to hand to ``save_pretrained(state_dict=…)`` (``None`` when the model is
not sharded, so peft / transformers read the weights as usual)::

    state = gathered_state_dict(module)   # all ranks
    if trainer.is_global_zero:
        module.model.save_pretrained(out, state_dict=state)

``DecoderLayerWrapPolicy`` is the FSDP auto-wrap policy of ``configs/strategies/fsdp.yaml``: one FSDP unit
per transformer layer of whatever Hugging Face model is being trained (the classes its
``_no_split_modules`` names, e.g. ``LlamaDecoderLayer``, ``GemmaDecoderLayer``, ``T5Block``), resolved
when FSDP wraps the model, so one YAML fragment serves every architecture.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lit_lora.cluster.fsdp_units import fsdp_root
from lit_lora.cluster.lightning_compat import attached_trainer


def run_device(module) -> torch.device:
    """The device Lightning puts batches on: the strategy's. ``module.device`` says the CPU under DeepSpeed ZeRO-3,
    which moves no module (``zero.Init`` placed the parameters), so tensors made to meet a batch ask here."""
    trainer = attached_trainer(module)
    return trainer.strategy.root_device if trainer is not None else module.device


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """DeepSpeed ZeRO-3 marks each partitioned parameter with ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def zero3_prompt_embeddings(model: torch.nn.Module):
    """Under ZeRO-3, compute a prompt-learning adapter's prompt embeddings on every rank before rank 0 saves.

    peft's ``save_pretrained`` saves p-tuning / prefix tuning prompts by running the prompt encoder
    (``get_prompt_embedding_to_save``). Its weights are partitioned, so on rank 0 alone that forward waits for
    the other ranks' shards forever (the first checkpoint of a p-tuning run under ZeRO-3 hung). Inside the block
    the save reads the embeddings every rank computed together. A collective: call it on every rank.
    """
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    if config is None or not config.is_prompt_learning or not is_zero3_partitioned(model):
        yield
        return
    with torch.no_grad():
        embeddings = {name: model.get_prompt_embedding_to_save(adapter_name=name) for name in model.prompt_encoder}
    model.get_prompt_embedding_to_save = lambda adapter_name: embeddings[adapter_name]
    try:
        yield
    finally:
        del model.get_prompt_embedding_to_save


def _zero3_state_dict(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Gather partitioned parameters (only the trainable ones for an adapter) and copy them to the CPU."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        state = {n: p.detach().cpu().clone() for n, p in named}
    if not trainable_only:  # buffers are not partitioned
        state.update({n: b.detach().cpu().clone() for n, b in model.named_buffers()})
    return state


def _fsdp_state_dict(module) -> dict[str, torch.Tensor]:
    """Lightning's FSDP full state dict of the LightningModule, re-keyed to ``module.model``."""
    full = module.trainer.strategy.lightning_module_state_dict()
    prefix = "model."
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


FSDP_SEGMENT = "_fsdp_wrapped_module."


def peft_keyed(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gathered FSDP state keyed as the wrapped peft model names its tensors.

    peft (0.21) picks the adapter's tensors by the ``named_modules()`` names of its layers and removes an FSDP
    wrapper only at the start of a name; with each decoder layer wrapped (``DecoderLayerWrapPolicy``) the
    wrapper sits inside the names, so from the clean keys of a full state dict it keeps nothing and
    ``save_pretrained`` writes an empty adapter. ``without_fsdp_names`` cleans the saved file afterwards.
    """
    wrapped = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    names = {n.replace(FSDP_SEGMENT, ""): n for n in wrapped}
    return {names.get(k, k): v for k, v in state.items()}


def without_fsdp_names(adapter_dir: Path) -> None:
    """Remove the FSDP wrapper from the tensor names of a saved peft adapter (see ``peft_keyed``)."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path) if path.is_file() else {}
    if any(FSDP_SEGMENT in k for k in tensors):
        save_file({k.replace(FSDP_SEGMENT, ""): v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def gathered_state_dict(module) -> Optional[dict[str, torch.Tensor]]:
    """Full state dict of ``module.model`` under ZeRO-3 / FSDP (collective: call on all ranks), else ``None``."""
    if is_zero3_partitioned(module.model):
        return _zero3_state_dict(module.model, trainable_only=module.is_peft)
    return _fsdp_state_dict(module) if fsdp_root(module) is not None else None


# ---- FSDP auto-wrap policy -----------------------------------------------------------------------
def layer_classes(model: torch.nn.Module) -> set[type]:
    """Classes of the submodules that the Hugging Face models inside ``model`` name in ``_no_split_modules``.

    Those are the units transformers never splits across devices: the decoder / encoder layers, and for some
    models a block holding the input embeddings (RoBERTa's ``RobertaEmbeddings``), which is left out: peft's
    prompt learning and generation call the embeddings themselves, outside that block's forward, where its own
    FSDP unit would leave them sharded; in the root unit they are gathered. Raises when ``model`` names none.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(type(module), "_no_split_modules", None) or ())
    embeddings = input_embeddings(model)
    classes = {type(m) for m in model.modules() if type(m).__name__ in names
               and not any(id(inner) in embeddings for inner in m.modules())}
    if not classes:
        found = ", ".join(sorted(names)) or "none"
        raise ValueError(
            f"DecoderLayerWrapPolicy found no layer class to wrap in {type(model).__name__} (_no_split_modules: "
            f"{found}); set trainer.strategy.init_args.auto_wrap_policy to a set of layer classes instead")
    return classes


def input_embeddings(model: torch.nn.Module) -> set[int]:
    """``id``s of the input-embedding modules of the Hugging Face models inside ``model``."""
    found = set()
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if hasattr(type(module), "_no_split_modules") and callable(getter):
            with contextlib.suppress(NotImplementedError, AttributeError):
                found.add(id(getter()))
    return found


class DecoderLayerWrapPolicy(ModuleWrapPolicy):
    """FSDP ``auto_wrap_policy``: one unit per transformer layer, the classes resolved from the model itself.

    ``torch``'s ``ModuleWrapPolicy`` with its class set filled in (``layer_classes``) from the root
    module FSDP wraps. Frozen base weights and trainable LoRA weights share a unit, which FSDP
    allows with ``use_orig_params=True`` (Lightning's default, kept in ``configs/strategies/fsdp.yaml``)::

        strategy:
          class_path: lightning.pytorch.strategies.FSDPStrategy
          init_args:
            auto_wrap_policy: {class_path: lit_lora.cluster.sharding.DecoderLayerWrapPolicy}
            use_orig_params: true
    """

    def __init__(self) -> None:
        super().__init__(set())

    def resolve(self, root_module: torch.nn.Module) -> set[type]:
        """Fill in (once) and return the layer classes of ``root_module``."""
        if not self._module_classes:
            self._module_classes = layer_classes(root_module)
            self._module_classes_str = str(sorted(c.__name__ for c in self._module_classes))
        return self._module_classes

    def _run_policy(self, root_module: torch.nn.Module, ignored_modules: set, root_kwargs: dict[str, Any]):
        self.resolve(root_module)
        return super()._run_policy(root_module, ignored_modules, root_kwargs)

    def __call__(self, module: torch.nn.Module, recurse: bool, *args: Any, **kwargs: Any) -> bool:
        # the callable protocol: FSDP asks about the root module first
        self.resolve(module)
        return super().__call__(module, recurse, *args, **kwargs)


@contextlib.contextmanager
def outside_zero3_init():
    """Build a Hugging Face model with whole tensors even inside DeepSpeed ZeRO-3's ``zero.Init``.

    Lightning calls ``configure_model`` inside ``deepspeed.zero.Init`` under ZeRO-3, where every new
    parameter is partitioned at once (size 0 locally) and ``from_pretrained`` cannot load into it.
    DeepSpeed's own ``shutdown_init_context`` / ``restore_init_context`` lift the patching for the
    block; the ZeRO-3 engine partitions the finished model when it starts (after moving it to the
    GPU whole). Bases that can be loaded into partitions are (``partitioned_loading``); what is built
    here whole is the adapter, and a base that cannot (quantized, or a classifier with a head copy).
    """
    # zero.Init can only be active once DeepSpeed is imported: not importing it otherwise keeps runs
    # without DeepSpeed free of its import cost and its console output
    partition_parameters = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    if partition_parameters is None:
        yield
        return
    active = partition_parameters.top_level_context is not None
    if active:
        partition_parameters.shutdown_init_context()
    try:
        yield
    finally:
        if active:
            partition_parameters.restore_init_context()


def zero3_config(module) -> Optional[dict]:
    """The DeepSpeed config of ``module``'s trainer when it runs ZeRO stage 3, else ``None``."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = getattr(attached_trainer(module), "strategy", None)
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict) and strategy.zero_stage_3:
        return strategy.config
    return None


@contextlib.contextmanager
def partitioned_loading(config: dict):
    """Load a Hugging Face model under ZeRO-3 straight into partitions: each rank keeps 1/N of it.

    Yields an ``HfDeepSpeedConfig``, which makes ``from_pretrained`` load each weight into its partition
    (``transformers.integrations.is_deepspeed_zero3_enabled``); keep it alive as long as the model is
    used, generation and peft read it too. Inside Lightning's ``zero.Init`` the patching is redone
    under transformers' ``prevent_arange_dtype_change``: zero.Init casts ``torch.arange`` to bf16 /
    fp16 otherwise, and RoPE position tables built in bf16 are wrong past position 256.
    """
    from deepspeed.runtime.zero import partition_parameters
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    hf_config = HfDeepSpeedConfig(config)
    if partition_parameters.top_level_context is None:  # no zero.Init open: transformers opens its own
        yield hf_config
        return
    partition_parameters.shutdown_init_context()
    try:
        with prevent_arange_dtype_change():
            partition_parameters.restore_init_context()
            try:
                yield hf_config
            finally:
                partition_parameters.shutdown_init_context()
    finally:
        partition_parameters.restore_init_context()


def partitioned_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements in all) of the ZeRO-3 partitioned parameters of ``model``."""
    parts = [p for p in model.parameters() if hasattr(p, "ds_id")]
    return sum(p.ds_tensor.numel() for p in parts), sum(p.ds_numel for p in parts)
