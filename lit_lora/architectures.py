"""The reference models' architectures, so that their full-size shapes can be built without the hub.

Each entry holds the keyword arguments of the real ``transformers`` config class, copied from the
model's ``config.json`` on the Hugging Face hub (only the fields that shape the weights, plus the
dtype the checkpoint is stored in). ``meta_model`` builds the real architecture on the meta device:
every parameter has its true shape and dtype, and no memory is allocated and nothing is downloaded.

    from lit_lora.architectures import load_config, meta_model
    config = load_config("google/gemma-2b")
    model = meta_model(config, "causal")           # GemmaForCausalLM, 2,506,172,416 parameters
    print(sum(p.numel() for p in model.parameters()))

A model outside the registry is read from a local directory or from the hub (``AutoConfig``); when
neither works, ``UnknownArchitectureError`` names the model and lists the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    FalconConfig,
    GemmaConfig,
    LlamaConfig,
    PhiConfig,
    PretrainedConfig,
    RobertaConfig,
    T5Config,
)

from lit_lora.errors import InputError

Head = Literal["causal", "seq2seq", "masked", "sequence_classification"]
HEADS = {
    "causal": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "masked": AutoModelForMaskedLM,
    "sequence_classification": AutoModelForSequenceClassification,
}


@dataclass(frozen=True)
class Architecture:
    """One reference model: its config class and the ``config.json`` values that define its weights.

    Attributes:
        model_id: Hub id the configs use as ``model_name_or_path``.
        config_class: The transformers config class of the architecture.
        kwargs: Keyword arguments of ``config_class`` (from the hub ``config.json``).
        head: The head the published parameter count refers to (the pretraining head).
        published_params: Parameter count published for the model (model card / paper), for checks.
        max_positions: Longest sequence the model was trained for (``None``: relative positions).
        mlp: The feed-forward kind, which decides the activation memory of a layer.
    """

    model_id: str
    config_class: type
    kwargs: dict[str, Any]
    head: Head
    published_params: float
    max_positions: Optional[int]
    mlp: Literal["gated", "plain"]
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def config(self) -> PretrainedConfig:
        config = self.config_class(**self.kwargs)
        config._name_or_path = self.model_id
        return config


def _roberta(model_id: str, hidden: int, layers: int, heads: int, published: float, aliases=()) -> Architecture:
    return Architecture(
        model_id, RobertaConfig,
        dict(vocab_size=50265, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
             intermediate_size=4 * hidden, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
             layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, eos_token_id=2, dtype="float32"),
        head="masked", published_params=published, max_positions=512, mlp="plain", aliases=aliases,
    )


def _codet5(model_id: str, width: int, layers: int, heads: int, published: float) -> Architecture:
    return Architecture(
        model_id, T5Config,
        dict(vocab_size=32100, d_model=width, d_kv=64, d_ff=4 * width, num_layers=layers, num_decoder_layers=layers,
             num_heads=heads, feed_forward_proj="relu", relative_attention_num_buckets=32,
             layer_norm_epsilon=1e-6, tie_word_embeddings=True, pad_token_id=0, eos_token_id=2, dtype="float32"),
        head="seq2seq", published_params=published, max_positions=None, mlp="plain",
    )


REGISTRY: dict[str, Architecture] = {a.model_id: a for a in [
    # GemmaForCausalLM: multi-query attention (1 KV head of 256), GeGLU MLP, tied 256k embeddings.
    Architecture(
        "google/gemma-2b", GemmaConfig,
        dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
             num_attention_heads=8, num_key_value_heads=1, head_dim=256, hidden_act="gelu_pytorch_tanh",
             max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
             bos_token_id=2, eos_token_id=1, pad_token_id=0, dtype="bfloat16"),
        head="causal", published_params=2.51e9, max_positions=8192, mlp="gated",
    ),
    # T5ForConditionalGeneration: ReLU MLP, relative positions, tied 32,100 embeddings (small: the codet5_lora tutorial).
    _codet5("Salesforce/codet5-base", width=768, layers=12, heads=12, published=2.23e8),
    _codet5("Salesforce/codet5-small", width=512, layers=6, heads=8, published=6.0e7),
    # PhiForCausalLM: parallel attention + MLP block, partial rotary (50%), untied LM head with bias.
    Architecture(
        "microsoft/phi-1_5", PhiConfig,
        dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
             num_attention_heads=32, num_key_value_heads=32, hidden_act="gelu_new", max_position_embeddings=2048,
             layer_norm_eps=1e-5, tie_word_embeddings=False, qk_layernorm=False, resid_pdrop=0.0,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
             dtype="float16"),
        head="causal", published_params=1.42e9, max_positions=2048, mlp="plain", aliases=("microsoft/phi-1.5",),
    ),
    Architecture(
        "microsoft/phi-2", PhiConfig,
        dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, hidden_act="gelu_new", max_position_embeddings=2048,
             layer_norm_eps=1e-5, tie_word_embeddings=False, qk_layernorm=False, resid_pdrop=0.1,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
             bos_token_id=50256, eos_token_id=50256, dtype="float16"),
        head="causal", published_params=2.78e9, max_positions=2048, mlp="plain",
    ),
    # FalconForCausalLM (7B): multi-query attention, parallel attention + MLP, no biases, tied embeddings.
    Architecture(
        "tiiuae/falcon-7b", FalconConfig,
        dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
             multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False, alibi=False,
             layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=11, eos_token_id=11,
             dtype="bfloat16"),
        head="causal", published_params=6.92e9, max_positions=2048, mlp="plain",
    ),
    # LlamaForCausalLM: grouped-query attention (8 KV heads), SwiGLU MLP, untied 128k vocabulary.
    Architecture(
        "meta-llama/Meta-Llama-3-8B-Instruct", LlamaConfig,
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=8192,
             rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
             bos_token_id=128000, eos_token_id=128009, dtype="bfloat16"),
        head="causal", published_params=8.03e9, max_positions=8192, mlp="gated",
        aliases=("meta-llama/Meta-Llama-3-8B",),
    ),
    _roberta("FacebookAI/roberta-large", 1024, 24, 16, 3.55e8, aliases=("roberta-large",)),
    _roberta("FacebookAI/roberta-base", 768, 12, 12, 1.25e8, aliases=("roberta-base",)),
]}
_BY_NAME = {name.lower(): arch for arch in REGISTRY.values() for name in (arch.model_id, *arch.aliases)}


class UnknownArchitectureError(InputError, ValueError):
    """A model that is neither in the registry, nor a local directory, nor reachable on the hub."""


def lookup(name_or_path: str) -> Optional[Architecture]:
    """The registry entry of a hub id (case-insensitive, aliases included), or ``None``."""
    return _BY_NAME.get(name_or_path.strip().rstrip("/").lower())


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config: a local directory first, then the registry, then the hub."""
    if (Path(name_or_path) / "config.json").is_file():
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    arch = lookup(name_or_path)
    if arch is not None:
        return arch.config()
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownArchitectureError(
            f"{name_or_path!r} is not in lit-lora's architecture registry and its config could not be read "
            f"from a local directory or the hub ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Registry: {known}. Use a local model directory, make the hub reachable, or add an entry to "
            f"lit_lora/architectures.py."
        ) from err


def meta_model(config: PretrainedConfig, head: Union[Head, type],
               dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """The full-size model with ``head`` (a name of ``HEADS`` or an ``AutoModelFor…`` class) built on the meta
    device (true shapes, no memory, no download), in ``dtype`` or the checkpoint's."""
    auto_class = HEADS[head] if isinstance(head, str) else head
    with torch.device("meta"):
        return auto_class.from_config(config, dtype=dtype or config_dtype(config))


def config_dtype(config: PretrainedConfig) -> torch.dtype:
    """The dtype the checkpoint is stored in (what ``dtype="auto"`` loads), float32 when unrecorded."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
