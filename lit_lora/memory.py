"""GPU memory of a training run, from the shapes and dtypes of a (meta-device) model.

Four parts, each in bytes, each an estimate with its assumptions stated:

* **weights** — every parameter and buffer at its storage dtype (a packed 4-bit weight is half a byte a
  value), plus the bitsandbytes quantization constants, which are not parameters (``quant_constant_bytes``);
* **gradients** — one gradient per trainable value, in the parameter's dtype;
* **optimizer state** — AdamW's two moments (``optimizer_state_bytes``);
* **activations** — what autograd keeps for backward at a batch size and sequence length
  (``activation_bytes``), plus a fixed allowance for the CUDA context and allocator slack.

Under DeepSpeed ZeRO or FSDP, ``Sharding`` (read from the Trainer config) says which of the first three parts
each device holds a share of, or leaves in CPU memory (``sharded_state``).

    from lit_lora.memory import optimizer_state_bytes
    optimizer_state_bytes([p for p in model.parameters() if p.requires_grad], "paged_adamw_8bit")

What a run measured, to set next to the estimate, is ``peak_memory()`` (``run_summary.json``, ``lit-lora compare``).
"""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

GIB = 2**30

# bitsandbytes block sizes: 4-bit weights keep one absmax per 64 values; double quantization stores those
# absmax values in 8 bits with one fp32 constant per 256 of them (``quant_constant_bytes``); 8-bit optimizers
# keep one fp32 absmax per 256 state values and a 256-entry fp32 quantization map per state, and only for
# tensors of at least 4096 values (smaller ones keep 32-bit state).
NF4_BLOCK = 64
DOUBLE_QUANT_BLOCK = 256
FOUR_BIT_CODE = 16  # fp32 entries of the NF4 / FP4 code table in every 4-bit layer's quant_state
DOUBLE_QUANT_CODE = 256  # fp32 entries of the 8-bit map of the double-quantized absmax, one copy a layer
OPTIM_8BIT_BLOCK = 256
OPTIM_8BIT_QMAP = 256
OPTIM_8BIT_MIN_SIZE = 4096
# activations written as Python expressions keep their intermediates: transformers' NewGELUActivation
# (0.5 x (1 + tanh(...))) keeps 3 more tensors of its input's size than a fused GELU
PYTHON_ACTIVATIONS = {"gelu_new": 3}


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def quant_constant_bytes(layer_values: int | Iterable[int], bits: int, double_quant: bool, rows: int = 0) -> int:
    """Bytes of the constants that dequantize bitsandbytes weights (not counted as parameters), summed over
    the quantized layers: ``layer_values`` holds each layer's weight count (an int is one layer).

    4-bit (NF4 / FP4), a layer of n values in b = ceil(n / 64) blocks: one fp32 absmax a block (4b bytes,
    0.5 bit a value) and its own copy of the 16-entry fp32 code table (64 bytes). With double quantization
    the absmax values are stored in 8 bits (b bytes) less their fp32 mean (4 bytes), in blocks of 256 with
    one fp32 absmax each (4 ceil(b / 256)) and a copy of the 256-entry fp32 map (1,024 bytes): ~0.127 bit a
    value plus 1,092 bytes a layer. Each term is per layer, as ``QuantState`` stores it (bitsandbytes 0.50).
    8-bit (LLM.int8): one fp32 scale per output row (``rows``: the rows of all quantized layers).
    """
    if bits == 8:
        return 4 * rows
    total = 0
    for values in [layer_values] if isinstance(layer_values, int) else layer_values:
        blocks = math.ceil(values / NF4_BLOCK)
        total += 4 * FOUR_BIT_CODE
        if double_quant:
            total += blocks + 4 + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCK) + 4 * DOUBLE_QUANT_CODE
        else:
            total += 4 * blocks
    return total


def optimizer_state_bytes(trainable: Iterable[torch.Tensor], name: str) -> int:
    """AdamW state of the trainable tensors: two moments per value.

    ``adamw`` (torch): the moments take the parameter's dtype (``zeros_like``), 8 bytes a value in fp32.
    ``paged_adamw``: fp32 moments in CUDA unified memory (same size; pages move to the CPU under pressure).
    ``adamw_8bit`` / ``paged_adamw_8bit``: 1 byte per moment plus one fp32 absmax per 256 values
    (~2.03 bytes a value) and a 256-entry fp32 map per moment and tensor; tensors under 4096 values keep
    fp32 moments (bitsandbytes' ``min_8bit_size``).
    """
    total = 0
    for p in trainable:
        n = p.numel()
        if name == "adamw":
            total += 2 * n * p.element_size()
        elif name.endswith("8bit") and n >= OPTIM_8BIT_MIN_SIZE:
            total += 2 * (n + 4 * math.ceil(n / OPTIM_8BIT_BLOCK) + 4 * OPTIM_8BIT_QMAP)
        else:
            total += 2 * n * 4
    return total


@dataclass(frozen=True)
class Shape:
    """The dimensions that decide activation memory, read from a transformers config."""

    layers: int
    decoder_layers: int  # encoder-decoder models only (0 otherwise)
    hidden: int
    heads: int
    q_dim: int  # heads x head_dim
    kv_dim: int  # key/value heads x head_dim
    intermediate: int
    gated_mlp: bool
    vocab: int
    norms: int = 2  # norms a layer: 1 where attention and MLP read one norm in parallel (Phi, Falcon-7B)
    activation_extra: int = 0  # MLP-width values a Python-written activation keeps beyond its input

    @classmethod
    def from_config(cls, config, gated_mlp: bool) -> "Shape":
        c = config
        hidden = getattr(c, "hidden_size", None) or c.d_model
        heads = getattr(c, "num_attention_heads", None) or c.num_heads
        head_dim = getattr(c, "head_dim", None) or getattr(c, "d_kv", None) or hidden // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or getattr(c, "num_kv_heads", None) or heads
        if getattr(c, "multi_query", False) and not getattr(c, "new_decoder_architecture", False):
            kv_heads = 1
        intermediate = (getattr(c, "intermediate_size", None) or getattr(c, "d_ff", None)
                        or getattr(c, "ffn_hidden_size", None) or 4 * hidden)
        if c.is_encoder_decoder:
            layers, decoder_layers = c.num_layers, c.num_decoder_layers
        else:
            layers, decoder_layers = c.num_hidden_layers, 0
        parallel = c.model_type == "phi" or (getattr(c, "parallel_attn", False)
                                             and not getattr(c, "new_decoder_architecture", False))
        return cls(layers, decoder_layers, hidden, heads, heads * head_dim, kv_heads * head_dim, intermediate,
                   gated_mlp, c.vocab_size, norms=1 if parallel else 2,
                   activation_extra=PYTHON_ACTIVATIONS.get(getattr(c, "hidden_act", None) or "", 0))


def layer_values_per_token(shape: Shape, cross_attention: bool = False, projection_inputs: Optional[int] = None,
                           value_bytes: int = 2, kv_repeated: bool = True) -> int:
    """Values (of ``value_bytes``) one transformer layer keeps for backward per token (no checkpointing, SDPA).

    norms: each keeps its input in float32 (RMSNorm upcasts, autocast runs LayerNorm in float32), ``shape.norms``;
    attention: q, and k and v repeated to the query heads (SDPA with a padding mask; without a mask transformers
    lets SDPA do the grouping), and the output, which the output projection reads in place -> 4 q_dim; a
    FlashAttention varlen kernel (``kv_repeated=False``) keeps k and v at their own heads -> 2 q_dim + 2 kv_dim;
    MLP: a gated MLP keeps gate, act(gate) and up (3i), a plain MLP its pre-activation (i), plus what a Python
    activation keeps (``shape.activation_extra`` i: Phi's ``gelu_new`` 3i);
    the projections' inputs: ``projection_inputs`` (``estimate.trainable_kept_values`` counts them on the
    model), by default the norm outputs and the MLP's last input (2h + i), as when every projection trains.
    A decoder layer of an encoder-decoder adds cross-attention: its norm, its q and output, and the norm output
    its q projection reads; the projected encoder keys/values are counted at the source length by
    ``activation_bytes``. Checked against what autograd saves in ``tests/test_activation_memory.py`` (Llama and
    Phi layers). Not counted: residual dropout's masks (a byte a value, where a config trains with it).
    """
    norm = shape.hidden * 4 // value_bytes  # one float32 norm input
    mlp = 3 if shape.gated_mlp else 1 + shape.activation_extra
    attention = 2 * shape.q_dim + 2 * (shape.q_dim if kv_repeated else shape.kv_dim)
    values = shape.norms * norm + attention + mlp * shape.intermediate
    values += shape.norms * shape.hidden + shape.intermediate if projection_inputs is None else projection_inputs
    if cross_attention:
        values += norm + shape.hidden + 2 * shape.q_dim
    return values


def label_only_head_bytes(shape: Shape, tokens: int, value_bytes: int, chunk_positions: int) -> int:
    """What the label-only LM head (``models/label_only_loss.py``) holds instead of ``[tokens, vocab]`` logits.

    The labelled rows of the final hidden states are gathered (``tokens * h``) and the gradient of those rows is
    kept from the forward to the backward (``tokens * h`` again); one chunk at a time, its float32 logits,
    turned into the softmax gradient in place, plus that gradient in the compute dtype
    (``chunk * vocab * (4 + bytes)``). Every position is counted as labelled, as every row is counted as full.
    """
    chunk = min(chunk_positions, tokens)
    return 2 * tokens * shape.hidden * value_bytes + chunk * shape.vocab * (4 + value_bytes)


def inference_activation_bytes(shape: Shape, batch: int, seq: int, value_bytes: int,
                               logits: bool = True, generating: bool = False) -> dict[str, int]:
    """Activation memory of a forward pass with nothing to train (evaluation, in-context prompting).

    No layer keeps activations for a backward pass: one layer's values are live at a time
    (``b * s * per_layer``), plus the KV cache of generation (``2 * L * b * s * kv_dim``) and the logits
    in the compute dtype (``b * s * vocab``); ``generating``: ``generate`` computes the last position's logits
    only (``logits_to_keep=1``), which its logits processors hold in float32 (``b * vocab * 4``).
    """
    tokens = batch * seq
    layers = shape.layers + (shape.decoder_layers or 0)
    logit_bytes = batch * shape.vocab * 4 if generating else tokens * shape.vocab * value_bytes
    return {"layers": tokens * layer_values_per_token(shape, value_bytes=value_bytes) * value_bytes,
            "kv_cache": 2 * layers * tokens * shape.kv_dim * value_bytes,
            "logits": logit_bytes if logits else 0}


def activation_bytes(shape: Shape, batch: int, seq: int, value_bytes: int, checkpointing: bool,
                     projection_inputs: Optional[int] = None, target_seq: Optional[int] = None,
                     eager_attention: bool = False, logits: bool = True, label_only_chunk: Optional[int] = None,
                     residual_bytes: Optional[int] = None, kv_repeated: bool = True) -> dict[str, int]:
    """Activation memory of one forward/backward at ``batch`` x ``seq`` (every row padded to ``seq``).

    Per layer and token: ``layer_values_per_token`` with ``projection_inputs`` (see there). Without gradient
    checkpointing every layer keeps them all: ``L * b * s * per_layer * bytes``. With checkpointing only each
    layer's input is kept (``L * b * s * h * residual_bytes``: the residual stream has the embedding's dtype,
    float32 after QLoRA's preparation; default ``value_bytes``) and one layer's activations are rebuilt at a time
    during backward.
    Eager attention also keeps the softmax scores and probabilities, ``2 * b * heads * s^2`` values a layer;
    SDPA / flash attention keep none. Logits: ``b * s * vocab`` values in the compute dtype plus their
    fp32 copy and fp32 log-softmax that the cross-entropy keeps (``4 + 4`` bytes). Encoder-decoder models
    count the encoder at ``seq`` and the decoder at ``target_seq``, whose cross-attention also keeps the
    projected encoder keys and values (``2 * kv_dim`` a source token). ``label_only_chunk``: the LM head runs on
    labelled positions in chunks of that many (``label_only_head_bytes``) instead. ``kv_repeated``: see
    ``layer_values_per_token`` (decoder-only models; the varlen kernels are for packed causal rows).
    """
    def stack(layers: int, tokens: int, per_layer: int, extra_per_layer: int = 0) -> int:
        if checkpointing:
            inputs = layers * tokens * shape.hidden * (residual_bytes or value_bytes)
            return inputs + (tokens * per_layer + extra_per_layer) * value_bytes
        return layers * (tokens * per_layer + extra_per_layer) * value_bytes

    def scores(length: int, kv_length: int) -> int:
        return 2 * batch * shape.heads * length * kv_length if eager_attention else 0

    tokens = batch * seq
    per_layer = layer_values_per_token(shape, False, projection_inputs, value_bytes, kv_repeated)
    parts = {"layers": stack(shape.layers, tokens, per_layer, scores(seq, seq))}
    out_tokens = tokens
    if shape.decoder_layers:
        target_seq = target_seq or seq
        out_tokens = batch * target_seq
        cross_kv = 2 * shape.kv_dim * tokens
        parts["decoder_layers"] = stack(
            shape.decoder_layers, out_tokens,
            layer_values_per_token(shape, True, projection_inputs, value_bytes),
            cross_kv + scores(target_seq, target_seq) + scores(target_seq, seq))
    parts["embeddings"] = 2 * out_tokens * shape.hidden * value_bytes
    head = out_tokens * shape.vocab * (value_bytes + 8) if label_only_chunk is None else \
        label_only_head_bytes(shape, out_tokens, value_bytes, label_only_chunk)
    parts["logits"] = head if logits else 0
    return parts


@dataclass(frozen=True)
class Sharding:
    """How a strategy spreads the training state over ``world`` devices (``Sharding.of_trainer``).

    ``weights`` / ``gradients`` / ``optimizer``: the number of devices each is split over (1: every device holds it
    all): ZeRO-1 splits the optimizer state, ZeRO-2 the gradients too, ZeRO-3 and FSDP's ``FULL_SHARD`` the
    parameters too. ``master_weights``: DeepSpeed in 16-bit keeps a float32 copy of the trainable values in its
    optimizer. Offloaded parts live in CPU memory (ZeRO's optimizer offload takes the gradient partitions along,
    FSDP's CPU offload parameters, gradients and optimizer state). ``gathered_layer``: with sharded parameters
    one layer's weights are gathered whole for its forward / backward. ``ddp_buckets``: DDP's gradient buckets,
    a second copy of the gradients. Not counted: ZeRO's communication buckets, FSDP's prefetched next unit.
    """

    name: str = "one device"
    world: int = 1
    weights: int = 1
    gradients: int = 1
    optimizer: int = 1
    master_weights: bool = False
    offload_optimizer: bool = False
    offload_parameters: bool = False
    offload_gradients: bool = False
    gathered_layer: bool = False
    ddp_buckets: bool = False
    devices_known: bool = True  # False: ``trainer.devices`` is auto / -1, counted as one device

    @staticmethod
    def half_dtype(precision: str) -> Optional[torch.dtype]:
        """The 16-bit dtype of a Lightning precision (``bf16-mixed``, ``16-true`` …), None for 32 / 64-bit."""
        return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") \
            else None

    @classmethod
    def of_trainer(cls, trainer) -> "Sharding":
        """The sharding of ``trainer.strategy`` over ``trainer.devices`` x ``trainer.num_nodes`` as Lightning runs
        it; more than one device and no strategy is DDP (as Lightning's ``auto`` picks)."""
        from lit_lora.cluster.launch_checks import device_count
        from lit_lora.cluster.strategy_config import deepspeed_settings, field, strategy_family

        known = device_count(trainer.get("devices"), trainer.get("accelerator"))
        per_node = max(known or 1, 1)
        world = per_node * max(int(trainer.get("num_nodes") or 1), 1)
        strategy = trainer.get("strategy")
        deepspeed = deepspeed_settings(strategy)
        args = {} if isinstance(strategy, str) or strategy is None else field(strategy, "init_args") or {}
        common = {"world": world, "devices_known": known is not None}
        if deepspeed is not None:
            stage = deepspeed.stage
            return cls(f"DeepSpeed ZeRO-{stage}", weights=world if stage >= 3 else 1,
                       gradients=world if stage >= 2 else 1, optimizer=world if stage >= 1 else 1,
                       master_weights=cls.half_dtype(str(trainer.get("precision") or "")) is not None,
                       offload_optimizer=deepspeed.offload_optimizer,
                       offload_parameters=stage >= 3 and deepspeed.offload_parameters,
                       offload_gradients=deepspeed.offload_optimizer, gathered_layer=stage >= 3 and world > 1,
                       **common)
        family = strategy_family(strategy)
        if family == "fsdp":
            mode = str(field(args, "sharding_strategy", None) or "FULL_SHARD").rsplit(".", 1)[-1].upper().lstrip("_")
            split = 1 if mode == "NO_SHARD" else per_node if mode.startswith("HYBRID") else world
            cpu = field(args, "cpu_offload", None) or strategy == "fsdp_cpu_offload"
            cpu = bool(field(field(cpu, "init_args", None) or cpu, "offload_params", True)) if cpu else False
            full = mode in ("FULL_SHARD", "HYBRID_SHARD") and split > 1
            return cls(f"FSDP {mode}", weights=split if full else 1, gradients=split, optimizer=split,
                       offload_optimizer=cpu, offload_parameters=cpu, offload_gradients=cpu, gathered_layer=full,
                       ddp_buckets=mode == "NO_SHARD", **common)
        if family == "ddp" or world > 1:
            return cls("DDP", ddp_buckets=True, **common)
        return cls(**common)


def sharded_state(sharding: Sharding, weights: int, gradients: int, optimizer: int,
                  layer_bytes: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) on one device under ``sharding``, from their unsharded bytes;
    ``layer_bytes``: the largest layer's weights, gathered whole where parameters are sharded."""
    on_device = 0 if sharding.offload_parameters else -(-weights // sharding.weights)
    if sharding.gathered_layer:
        on_device += layer_bytes
    grads = 0 if sharding.offload_gradients else -(-gradients // sharding.gradients)
    grads *= 2 if sharding.ddp_buckets else 1
    state = 0 if sharding.offload_optimizer else -(-optimizer // sharding.optimizer)
    return on_device, grads, state


@dataclass
class MemoryEstimate:
    """The parts of an estimate in bytes, and whether their sum fits a GPU. ``load_peak``: what a device holds while
    the model loads, where that exceeds the training total (a base loaded whole before ZeRO-3 partitions it)."""

    weights: int
    quant_constants: int
    gradients: int
    optimizer: int
    activations: dict[str, int]
    overhead: int
    load_peak: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.quant_constants + self.gradients + self.optimizer
                + sum(self.activations.values()) + self.overhead)

    @property
    def peak(self) -> int:
        return max(self.total, self.load_peak)

    def fits(self, gpu_bytes: float) -> bool:
        return self.peak <= gpu_bytes


def peak_memory() -> tuple[float, str]:
    """Peak memory in MiB: CUDA allocations when on a GPU, otherwise this process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"
