"""Prompt-based methods: trained virtual tokens in front of a frozen model (peft prompt learning).

    from lit_lora.adapters import PTuning
    adapter = PTuning(num_virtual_tokens=20, reparameterization="MLP", encoder_hidden_size=128)
    model = adapter.wrap(AutoModelForSequenceClassification.from_pretrained(path, num_labels=3), "SEQ_CLS")

In YAML (``class_path: lit_lora.adapters.PTuning``). Under ``SEQ_CLS`` peft also trains the
classification head; ``SequenceClassifierModule`` names the head modules in ``modules_to_save``.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence

from torch import nn
from transformers import PretrainedConfig

from lit_lora.adapters.base import Adapter, AdapterSpec, InvalidAdapterSetting, require


class _PromptLearning(Adapter):
    """Shared wrapping of peft's prompt-learning configs (the base model stays frozen)."""

    def __init__(self, num_virtual_tokens: int, modules_to_save: Optional[list[str]]):
        require(self.method, "num_virtual_tokens", num_virtual_tokens, num_virtual_tokens >= 1, ">= 1")
        self.num_virtual_tokens = num_virtual_tokens
        self.modules_to_save = modules_to_save

    def spec(self) -> AdapterSpec:
        return AdapterSpec(method=self.method, virtual_tokens=self.num_virtual_tokens)

    def with_trained_modules(self, names: Sequence[str]) -> "_PromptLearning":
        adapter = copy.copy(self)
        adapter.modules_to_save = sorted(set(self.modules_to_save or []) | set(names))
        return adapter

    def peft_config(self, task_type: str, model: nn.Module):
        """The peft config, given a copy of ``modules_to_save``: under ``SEQ_CLS`` peft appends its head names to
        the list it gets, which would change this adapter and break the next model it wraps."""
        raise NotImplementedError

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(task_type, model))


class PromptTuning(_PromptLearning):
    """Prompt tuning (Lester et al., 2021): a trained embedding per virtual token, prepended to the input.

    Args:
        num_virtual_tokens: Number of trained prompt tokens.
        init_text: Initialise the prompt from the embeddings of this text (e.g. "Classify the relation:")
            instead of at random; the model's own tokenizer encodes it.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "prompt_tuning"

    def __init__(self, num_virtual_tokens: int = 20, init_text: Optional[str] = None,
                 modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.init_text = init_text

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PromptTuningConfig, PromptTuningInit

        kwargs = {}
        if self.init_text:
            kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": self.init_text,
                      "tokenizer_name_or_path": model.config.name_or_path}
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
                                  modules_to_save=copy.copy(self.modules_to_save), **kwargs)


class PTuning(_PromptLearning):
    """P-tuning (Liu et al., 2021): virtual-token embeddings produced by a trained prompt encoder.

    Args:
        num_virtual_tokens: Number of virtual tokens.
        reparameterization: The prompt encoder, ``MLP`` or ``LSTM``.
        encoder_hidden_size: Hidden size of the prompt encoder.
        encoder_num_layers: Layers of the LSTM encoder (the MLP always has two).
        encoder_dropout: Dropout inside the prompt encoder.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "p_tuning"

    def __init__(self, num_virtual_tokens: int = 20, reparameterization: Literal["MLP", "LSTM"] = "MLP",
                 encoder_hidden_size: int = 128, encoder_num_layers: int = 2, encoder_dropout: float = 0.0,
                 modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.reparameterization = reparameterization
        self.encoder_hidden_size = encoder_hidden_size
        self.encoder_num_layers = encoder_num_layers
        self.encoder_dropout = encoder_dropout

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
            encoder_reparameterization_type=self.reparameterization, encoder_hidden_size=self.encoder_hidden_size,
            encoder_num_layers=self.encoder_num_layers, encoder_dropout=self.encoder_dropout,
            modules_to_save=copy.copy(self.modules_to_save),
        )


class PrefixTuning(_PromptLearning):
    """Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer.

    peft feeds the prefixes to the model as a key/value cache; whether an architecture takes them
    is checked by behaviour before its weights are loaded (``prefix_support_problem``). With peft
    0.21 on transformers 5.24 causal LMs (Llama, Gemma, Phi) and T5 take them; Falcon and every
    sequence-classification model do not, and fail with the architecture named.

    Args:
        num_virtual_tokens: Prefix length.
        prefix_projection: Produce the prefixes with a two-layer MLP (more stable training).
        encoder_hidden_size: Hidden size of that MLP.
        modules_to_save: Extra modules trained in full and saved with the adapter (a classification head).
    """

    method = "prefix_tuning"

    def __init__(self, num_virtual_tokens: int = 20, prefix_projection: bool = False,
                 encoder_hidden_size: int = 512, modules_to_save: Optional[list[str]] = None):
        super().__init__(num_virtual_tokens, modules_to_save)
        self.prefix_projection = prefix_projection
        self.encoder_hidden_size = encoder_hidden_size

    def check_base(self, config: PretrainedConfig, model_class: type, task_type: str, **kwargs) -> None:
        problem = prefix_support_problem(config, model_class, task_type, **kwargs)
        if problem is not None:
            name = _concrete_name(model_class, config)
            raise InvalidAdapterSetting(
                f"PrefixTuning: {name} ({config.model_type}) takes no past_key_values prefixes from peft "
                f"{_version('peft')} on transformers {_version('transformers')} ({problem}); "
                f"use PTuning, PromptTuning or LoRA for this architecture"
            )

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        self.check_base(model.config, type(model), task_type)
        return super().wrap(model, task_type)

    def peft_config(self, task_type: str, model: nn.Module):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens,
                                  prefix_projection=self.prefix_projection,
                                  encoder_hidden_size=self.encoder_hidden_size,
                                  modules_to_save=copy.copy(self.modules_to_save))


def prefix_support_problem(config: PretrainedConfig, model_class: type, task_type: str, **kwargs) -> Optional[str]:
    """``None`` when peft's prefixes reach this architecture's attention, else what went wrong.

    Behaviour, not signatures: a one-layer copy of the architecture with random weights (hidden sizes
    and head layout kept, MLP and vocabulary shrunk) is wrapped with peft's ``PrefixTuningConfig``,
    run, its prefixes perturbed, and run again; the prefixes work when the output moves. The global
    RNG is left as it was; the answer is cached per architecture.

        prefix_support_problem(AutoConfig.from_pretrained(path), AutoModelForCausalLM, "CAUSAL_LM")  # None
    """
    key = (config.to_json_string(use_diff=False), model_class, task_type, repr(sorted(kwargs.items())))
    if key not in _PROBED:
        _PROBED[key] = _probe_prefixes(config, model_class, task_type, kwargs)
    return _PROBED[key]


_PROBED: dict = {}


def _probe_prefixes(config, model_class, task_type, kwargs) -> Optional[str]:
    import torch
    from peft import PrefixTuningConfig, get_peft_model

    probe_config = _one_layer_copy(config)
    build = getattr(model_class, "from_config", None) or model_class._from_config
    inputs = {"input_ids": torch.tensor([[3, 4, 5, 6]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    if task_type == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = torch.tensor([[0, 3]])
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), torch.device("cpu"):
            torch.manual_seed(0)
            model = get_peft_model(build(probe_config, **kwargs).eval(),
                                   PrefixTuningConfig(task_type=task_type, num_virtual_tokens=2))
            before = model(**inputs).logits
            for parameter in model.prompt_encoder.parameters():
                parameter.add_(torch.randn_like(parameter))
            after = model(**inputs).logits
    except Exception as error:  # any failure means peft cannot inject prefixes here; the message says which
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    if torch.allclose(before, after):
        return "the prefixes do not change the output"
    return None


def _one_layer_copy(config: PretrainedConfig) -> PretrainedConfig:
    """The architecture at its smallest that still shows how attention takes a cache."""
    probe = copy.deepcopy(config)
    for key in ("num_hidden_layers", "num_decoder_layers"):
        if getattr(probe, key, None):
            setattr(probe, key, 1)
    if isinstance(getattr(probe, "layer_types", None), list):
        probe.layer_types = probe.layer_types[:1]
    for key in ("intermediate_size", "ffn_hidden_size", "d_ff", "n_inner"):
        if getattr(probe, key, None):
            setattr(probe, key, 16)
    probe.vocab_size = 64
    for key, token_id in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2),
                          ("decoder_start_token_id", 0), ("sep_token_id", 2)):
        if hasattr(probe, key):
            setattr(probe, key, token_id)
    return probe


def _concrete_name(model_class: type, config: PretrainedConfig) -> str:
    """``RobertaForSequenceClassification`` for ``AutoModelForSequenceClassification`` and a RoBERTa config."""
    mapping = getattr(model_class, "_model_mapping", None)
    try:
        return mapping[type(config)].__name__ if mapping is not None else model_class.__name__
    except (KeyError, ValueError):
        return model_class.__name__


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
