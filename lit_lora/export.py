"""Merge a saved LoRA adapter into its base and save a plain transformers model.

The base is reloaded unquantized in ``dtype`` (merging into 4-bit weights would round the update
away), the adapter is applied with plain peft (strictly: a missing or unexpected tensor is an error, and
so is a NaN / inf weight), and ``merge_and_unload`` folds it in. The merged weights, in ``dtype``, are
checked again before anything is written: a finite adapter can still overflow float16 once added to its base::

    python -c "from lit_lora.export import merge_and_save; from transformers import AutoModelForCausalLM; \
merge_and_save('base/', 'runs/demo/adapter', 'runs/demo/merged', AutoModelForCausalLM)"
"""

from __future__ import annotations

from pathlib import Path

from lit_lora.adapters.base import to_dtype
from lit_lora.adapters.loading import load_peft_model
from lit_lora.cluster.checkpoint_io import files_follow_umask
from lit_lora.errors import IncompatibleConfig
from lit_lora.finite_guard import NonFiniteWeightsError, non_finite_error, non_finite_names

WIDER = {"float16": "bfloat16 or float32", "bfloat16": "float32"}  # what a merge that overflows can use instead


def merge_and_save(base_name_or_path: str, adapter_dir: str | Path, out_dir: str | Path, auto_model_class,
                   dtype: str = "float32", tokenizer=None, **load_kwargs) -> Path:
    """``load_kwargs`` rebuild the same head as in training (e.g. ``num_labels``, ``id2label``). The merged
    files get the umask's mode, as the run's other files (safetensors writes 0600)."""
    from peft import get_peft_model_state_dict

    check_mergeable_adapter(adapter_dir)
    base = auto_model_class.from_pretrained(base_name_or_path, dtype=to_dtype(dtype), **load_kwargs)
    model = load_peft_model(base, adapter_dir)
    check_untied_targets(model, adapter_dir)
    bad = non_finite_names(get_peft_model_state_dict(model).items())
    if bad:  # a NaN / inf adapter would merge into a model that outputs NaN
        raise non_finite_error(bad, f"a merged model from {adapter_dir}")
    merged = model.merge_and_unload()
    check_finite_merge(merged, adapter_dir, out_dir)  # before anything is written: no directory is left behind
    carry_pad_token(merged, tokenizer)
    out = Path(out_dir)
    merged.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    files_follow_umask(out)
    return out


def check_mergeable_adapter(adapter_dir: str | Path) -> None:
    """Refuse, before any weights load, an adapter directory whose method has no weights to fold into the base
    (prompt tuning, P-tuning, prefix tuning: ``adapter_config.json``'s ``peft_type``, whatever the config says):
    peft's model of it has no ``merge_and_unload``."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if config.is_prompt_learning:
        method = getattr(config.peft_type, "value", config.peft_type)
        raise IncompatibleConfig(
            f"cannot merge {adapter_dir}: it is a {method} adapter (its adapter_config.json), whose trained virtual "
            "tokens or prefixes go in front of the input and do not fold into the base weights. Only LoRA / QLoRA "
            "adapters merge; load this one unmerged with peft's PeftModel.from_pretrained onto its base")


def check_finite_merge(merged, adapter_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse merged weights holding NaN / inf, naming their dtype and the first such tensor: a large
    (finite) update added to the base in float16 overflows, and the merged model would output NaN."""
    state = merged.state_dict()
    bad = non_finite_names(state.items())
    if not bad:
        return
    dtype = str(state[bad[0]].dtype).removeprefix("torch.")
    wider = WIDER.get(dtype)
    advice = (f"merge in a wider dtype ({wider}: export.merge_dtype, or lit-lora merge --dtype)" if wider else
              "the update is too large for any dtype: lower model.init_args.optim.lr and train again")
    raise NonFiniteWeightsError(
        f"refusing to write the merged model {out_dir}: merging {adapter_dir} into its base in {dtype} gives "
        f"non-finite values (NaN or inf) in {len(bad)} of {len(state)} weight tensors, first: {bad[0]}; "
        f"the adapter itself is finite, so {advice}")


def check_untied_targets(model, adapter_dir: str | Path) -> None:
    """Refuse to merge LoRA into a weight another module shares (an input embedding tied to the output layer,
    ``tie_word_embeddings``): merging changes the shared tensor, so the other module changes too and the merged
    model computes something else than the adapter did (peft only warns)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        shared = [n for n in owners.get(id(weight), []) if not n.startswith(f"{name}.")]
        if shared:
            raise IncompatibleConfig(
                f"refusing to merge {adapter_dir}: its LoRA layer {name.removeprefix('base_model.model.')} adapts a "
                f"weight tied to {shared[0].removeprefix('base_model.model.').removesuffix('.weight')} "
                "(tie_word_embeddings), which merging would change too. The adapter stays usable unmerged (peft's "
                "PeftModel.from_pretrained loads it onto the base); to merge, train with the embedding left out of "
                "the LoRA target_modules")


def carry_pad_token(merged, tokenizer) -> None:
    """Give the merged config the pad token training gave the model, from the tokenizer (where the base config has
    none; a classifier always, it pools on the last token that is not padding): the base reloaded here has only
    its own, often none, and a decoder classifier without one refuses every padded batch."""
    pad = getattr(tokenizer, "pad_token_id", None)
    classifier = type(merged).__name__.endswith("ForSequenceClassification")
    if pad is not None and (merged.config.pad_token_id is None or classifier):
        merged.config.pad_token_id = pad
