"""Parameters and GPU memory of a config, without weights or a download (``lit-lora estimate``).

    lit-lora estimate --config configs/code/gemma2b_qlora_python_codes.yaml --gpu_memory_gib 24
    lit-lora estimate --config configs/demo.yaml --model.init_args.model_name_or_path microsoft/phi-2

    from lit_lora.adapters import QLoRA
    from lit_lora.estimate import build
    from lit_lora.models import CausalLMModule
    built = build(CausalLMModule("google/gemma-2b", adapter=QLoRA(r=16)))
    built.trainable, built.total, built.quantized_values

The command (``lit_lora.commands.estimate``) reads the config as ``fit`` does and instantiates only the module,
which loads nothing. ``build`` builds the full-size architecture on the meta device with the one model builder
of training (``lit_lora.models.builder``: the architecture from ``lit_lora.architectures`` or a local / hub
config, quantized on the meta device exactly as ``from_pretrained`` would, wrapped by the configured adapter
with peft) and counts it the way peft counts. What the adapter is comes from its ``AdapterSpec``; memory
formulas are ``lit_lora.memory``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from lit_lora.adapters.base import count_parameters, to_dtype
from lit_lora.architectures import HEADS, lookup
from lit_lora.errors import IncompatibleConfig
from lit_lora.memory import GIB, MemoryEstimate, Shape, Sharding, activation_bytes, inference_activation_bytes, \
    optimizer_state_bytes, quant_constant_bytes, sharded_state, tensor_bytes
from lit_lora.models import builder
from lit_lora.models.label_only_loss import default_chunk_size, find_label_only_head


# ---- the model on the meta device ---------------------------------------------------------------------
def head_of(module) -> str:
    for head, auto_class in HEADS.items():
        if module.auto_model_class is auto_class:
            return head
    raise IncompatibleConfig(f"model.class_path: {type(module).__name__} loads {module.auto_model_class.__name__}; "
                             f"estimate builds the heads {', '.join(HEADS)} only")


@dataclass
class Built:
    """The adapted meta model and what the memory estimate needs to know about it."""

    model: nn.Module
    config: Any
    head: str
    trainable: int
    total: int
    quantized_layers: list[int] = field(default_factory=list)  # weight values of each quantized layer
    quantized_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def quantized_values(self) -> int:
        return sum(self.quantized_layers)


def build(module) -> Built:
    """The configured model at full size on the meta device, built by ``models.builder`` as ``configure_model``
    builds it (``module``: a config's module with what the CLI links, ``commands.experiment.model_of``)."""
    head = head_of(module)
    config = builder.architecture(module, meta=True)
    base = builder.load_base(module, config, meta=True)
    layers = builder.quantized_layers(base)
    notes = []
    if module.adapter.spec().quantized and not layers:
        notes.append(f"WARNING: bitsandbytes quantizes no layer of {type(base).__name__}; "
                     "the base stays at full precision (as it would in lit-lora fit)")
    model = builder.adapt(module, base, meta=True)
    trainable, total = count_parameters(model)
    return Built(model, config, head, trainable, total, [m.in_features * m.out_features for m in layers],
                 sum(m.out_features for m in layers), notes)


# ---- memory ----------------------------------------------------------------------------------------------
def generation_call(module, prompt_tokens: int) -> Optional[tuple[int, int]]:
    """(rows, tokens a row) of the largest ``generate`` call of a module that generates (evaluation,
    ``lit-lora incontext``): prompts of ``prompt_tokens`` cut into batches as ``evaluation.generation``
    cuts them, each row holding its prompt and ``max_new_tokens`` (times ``num_beams``); None for a module
    that only scores."""
    from lit_lora.evaluation.generation import GenerationSettings, batch_sizes

    settings = getattr(module, "evaluation", None)
    if not isinstance(settings, GenerationSettings):
        return None
    rows = batch_sizes([prompt_tokens] * max(1, settings.generation_batch_size), settings)[0]
    return rows * max(1, settings.num_beams), prompt_tokens + settings.max_new_tokens


def data_settings(cfg) -> dict:
    """Batch size and sequence lengths from the data section, whatever the datamodule calls them; packed, the
    batch is the token budget's sequences of ``max_length`` tokens (the rows the datamodule stacks)."""
    data = cfg.data.init_args.as_dict() if hasattr(cfg.data.init_args, "as_dict") else dict(cfg.data.init_args)
    batch = data.get("batch_size") or 1
    source = data.get("max_source_length") or data.get("max_length") or 512
    if data.get("packing") and data.get("max_tokens_per_batch"):
        batch = max(data["max_tokens_per_batch"] // source, 1)
    target = data.get("max_target_length") or source
    return {"batch_size": batch, "seq": source, "target_seq": target, "packing": bool(data.get("packing"))}


ATTENTION_OUTPUTS = ("o_proj", "o", "out_proj", "dense", "c_proj")  # read SDPA's output, already counted
DOWN_PROJECTIONS = ("down_proj", "fc2", "dense_4h_to_h", "wo", "c_proj")  # read a 16-bit MLP value under autocast


def trainable_kept_values(model: nn.Module, shape: Shape, mixed_precision: bool, value_bytes: int) -> int:
    """Values per token and layer that the trainable parts of the layers keep (averaged over layers).

    A projection needs its input when its weight trains or a LoRA adapter reads it. Projections of one parent
    that read inputs of one width share the input (q/k/v read one norm output, gate/up another); the attention's
    output projection reads SDPA's output, counted with the attention. A LoRA layer keeps its own copy of its
    input when peft makes one: LoRA dropout (plus the dropout's mask, a byte a value on CUDA), or mixed precision,
    where peft casts the input to the float32 adapter's dtype and autocast casts it back; a trainable float32
    projection that reads a float32 norm output gets autocast's copy too. A LoRA layer keeps its ``r``
    down-projected values, a trainable RMSNorm its normalised input.
    """
    from peft.tuners.lora import LoraLayer

    shared: set[tuple[str, int]] = set()
    own = extra_bytes = 0
    for name, module in model.named_modules():
        if not re.search(r"\.\d+\.", name) or ".lora_" in name or ".base_layer" in name:
            continue  # outside the repeated layers (the head has its own term), or inside a LoRA wrapper
        parent, leaf = name.rsplit(".", 1)
        reads_attention = leaf in ATTENTION_OUTPUTS and re.search(r"attn|attention", parent, re.IGNORECASE)
        if isinstance(module, LoraLayer) and module.lora_A:
            lora_a = next(iter(module.lora_A.values()))
            dropout = any(isinstance(d, nn.Dropout) and d.p > 0 for d in module.lora_dropout.values())
            copies = dropout or (mixed_precision and lora_a.weight.dtype == torch.float32)
            own += (module.in_features if copies else 0) + lora_a.out_features
            extra_bytes += module.in_features if dropout else 0
            needs_input = not copies or module.get_base_layer().weight.requires_grad
        elif isinstance(module, nn.Linear) and module.weight.requires_grad:
            copies = mixed_precision and module.weight.dtype == torch.float32 and not reads_attention \
                and leaf not in DOWN_PROJECTIONS
            own += module.in_features if copies else 0
            needs_input = not copies
        else:
            if "RMSNorm" in type(module).__name__ and getattr(module, "weight", None) is not None \
                    and module.weight.requires_grad:
                extra_bytes += shape.hidden * module.weight.element_size()
            continue
        if needs_input and not reads_attention:
            # one norm read in parallel by attention and MLP (shape.norms == 1): its output is one shared input
            norm_output = shape.norms == 1 and module.in_features == shape.hidden and leaf not in DOWN_PROJECTIONS
            shared.add((re.sub(r"(\.\d+)\..*", r"\1", name) if norm_output else parent, module.in_features))
    kept = own + sum(width for _, width in shared) + extra_bytes // value_bytes
    return kept // max(shape.layers + shape.decoder_layers, 1)


def weight_bytes(model: nn.Module) -> int:
    """Parameters (each once, tied ones too) and buffers at their storage dtype: a packed 4-bit weight as stored."""
    return (sum(tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values())
            + sum(tensor_bytes(b) for b in model.buffers()))


def quant_bytes(built: Built, adapter) -> int:
    """The bitsandbytes constants of the quantized layers (``quant_state`` / ``SCB``), which are not parameters."""
    if not built.quantized_layers:
        return 0
    spec = adapter.spec()
    return quant_constant_bytes(built.quantized_layers, spec.bits, spec.double_quant, built.quantized_rows)


def memory_estimate(built: Built, module, cfg, batch: int, seq: int, target_seq: int,
                    overhead_gib: float) -> tuple[MemoryEstimate, dict]:
    """The memory parts of the run on one of its devices, and the assumptions behind them (printed with the
    numbers). The meta model is first cast as the run casts it (``cast_as_trained``)."""
    model, adapter, spec = built.model, module.adapter, module.adapter.spec()
    precision = str(cfg.trainer.precision or "32-true")
    sharding = Sharding.of_trainer(cfg.trainer)
    cast_as_trained(model, precision, sharding)
    quant = quant_bytes(built, adapter)
    weights, gradients, optimizer, load_peak = state_bytes(built, module, sharding)
    trainable = any(p.requires_grad for p in model.parameters())
    compute = spec.compute_dtype
    value_bytes = 2 if "16" in precision else (torch.empty((), dtype=to_dtype(compute)).element_size()
                                               if compute else model_compute_bytes(model))
    checkpointing = builder.is_checkpointing(model)  # as built: the module's switch, else the adapter's default
    shape = Shape.from_config(built.config, gated_mlp=is_gated(model))
    virtual = spec.virtual_tokens
    attention = module.attn_implementation or getattr(built.config, "_attn_implementation", None)
    eager, varlen = attention == "eager", varlen_kernel_runs(attention, data_settings(cfg)["packing"], value_bytes)
    chunk = label_only_chunk(module, built, shape) if trainable else None  # generation runs the full head
    generating = not trainable and generation_call(module, seq) is not None  # its batch: the largest generate call
    if trainable:
        mixed = "mixed" in precision
        acts = activation_bytes(shape, batch, seq + virtual, value_bytes, checkpointing,
                                trainable_kept_values(model, shape, mixed, value_bytes), target_seq, eager,
                                logits=built.head in ("causal", "seq2seq"), label_only_chunk=chunk,
                                residual_bytes=embedding_bytes(model), kv_repeated=not varlen)
    else:  # nothing trains (NoAdapter): a forward pass keeps no activations for backward
        acts = inference_activation_bytes(shape, batch, seq + virtual, value_bytes,
                                          logits=built.head in ("causal", "seq2seq"), generating=generating)
    overhead = int(overhead_gib * GIB)
    estimate = MemoryEstimate(weights, quant, gradients, optimizer, acts, overhead,
                              load_peak + quant + overhead if load_peak else 0)
    assumptions = {"sharding": sharding, "devices_known": sharding.devices_known,
                   "batch": f"{batch} (the largest generate call)" if generating else batch, "seq": seq + virtual,
                   "target_seq": target_seq if shape.decoder_layers else None,
                   "activation_bytes": value_bytes, "gradient_checkpointing": checkpointing,
                   "attention": "eager (scores kept)" if eager
                   else f"{attention}'s varlen kernel (k/v at their own heads)" if varlen
                   else "SDPA (k/v repeated to the query heads, no s x s scores)",
                   "optimizer": module.optim.name, "precision": precision,
                   "activation_dtype": f"precision {precision}" if "16" in precision else "the compute dtype",
                   "lm_head": f"label-only LM head ({chunk} positions a chunk)" if chunk
                   else "the last position's logits (generate)" if generating
                   else "full logits" if built.head in ("causal", "seq2seq") else "no LM head"}
    return estimate, assumptions


# ---- strategies: what each device holds --------------------------------------------------------------------
def state_bytes(built: Built, module, sharding: Sharding) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer state, load peak) on one device: DeepSpeed in 16-bit adds its float32 master
    copy of the trainable values, whose moments are float32 too; the load peak is the whole base where ZeRO-3
    partitions a base loaded whole on each device (a quantized one, a classifier's), else 0."""
    model = built.model
    weights = weight_bytes(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(tensor_bytes(p) for p in trainable)
    if sharding.master_weights:
        masters = [torch.empty(p.shape, dtype=torch.float32, device="meta") for p in trainable]
        optimizer = optimizer_state_bytes(masters, module.optim.name) + sum(tensor_bytes(m) for m in masters)
    else:
        optimizer = optimizer_state_bytes(trainable, module.optim.name)
    whole = sharding.weights > 1 and sharding.name.startswith("DeepSpeed") and not (
        getattr(module, "loads_zero3_partitions", True) and module.adapter.quantization_config() is None)
    on_device = sharded_state(sharding, weights, gradients, optimizer, largest_layer_bytes(model))
    return (*on_device, weights if whole else 0)


def largest_layer_bytes(model: nn.Module) -> int:
    """Weights of the largest repeated layer (``….layers.7``): the unit FSDP and ZeRO-3 gather whole to run it."""
    return max((weight_bytes(m) for name, m in model.named_modules() if re.search(r"\.\d+$", name)), default=0)


def cast_as_trained(model: nn.Module, precision: str, sharding: Sharding) -> None:
    """Cast the meta model as the run casts it before the first step: a ``*-true`` precision converts the whole
    module (Lightning's ``convert_module``: the float32 LoRA weights peft made too); DeepSpeed in 16-bit casts
    every floating-point parameter, not the buffers. Packed 4-bit and int8 weights are not floating-point: kept."""
    dtype = Sharding.half_dtype(precision)
    if dtype is None:
        return
    if precision.endswith("-true"):
        model.to(dtype)
    elif sharding.name.startswith("DeepSpeed"):
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)


def varlen_kernel_runs(attention: Optional[str], packing: bool, value_bytes: int) -> bool:
    """Whether training attention runs a FlashAttention varlen kernel, which takes grouped key/value heads as they
    are: ``flash_attention_2`` always, ``torch_varlen`` on packed rows in half precision (elsewhere it is sdpa)."""
    return attention == "flash_attention_2" or (attention == "torch_varlen" and packing and value_bytes == 2)


def label_only_chunk(module, built: Built, shape: Shape) -> Optional[int]:
    """Positions per chunk when training runs the LM head on labelled positions only (as ``FineTuneModule
    .loss_path`` decides, on one device), else ``None``: the full ``[tokens, vocab]`` logits are counted."""
    if built.head != "causal" or not getattr(module, "label_only_loss", False):
        return None
    head, _ = find_label_only_head(built.model, placed=False)
    if head is None:
        return None
    return module.label_only_chunk or default_chunk_size(shape.vocab)


def model_compute_bytes(model: nn.Module) -> int:
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return floats[0].element_size() if floats else 4


def embedding_bytes(model: nn.Module) -> Optional[int]:
    """Bytes a value of the input embedding, the dtype of the residual stream between layers."""
    weight = getattr(base_model(model).get_input_embeddings(), "weight", None)
    return weight.element_size() if weight is not None and weight.is_floating_point() else None


def is_gated(model: nn.Module) -> bool:
    """A gated (GLU) MLP: Llama / Gemma ``gate_proj``, T5 v1.1 ``wi_0``."""
    return any(name.endswith(("gate_proj", "wi_0")) for name, _ in model.named_modules())


# ---- the command -------------------------------------------------------------------------------------------
def base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def report(module, built: Built, estimate: MemoryEstimate, assumptions: dict, gpu_gib: float) -> str:
    arch = lookup(module.model_name_or_path)
    source = "lit-lora architecture registry" if arch else "model config"
    pct = 100.0 * built.trainable / max(built.total, 1)
    a = assumptions
    s, notes = a["sharding"], state_notes(a["sharding"], a["optimizer"])
    lines = [
        f"model: {module.model_name_or_path} ({type(base_model(built.model)).__name__} from the {source},"
        " built on the meta device)",
        f"method: {module.adapter!r}",
        f"trainable params: {built.trainable:,} || all params: {built.total:,} || trainable%: {pct:.4f}",
        *built.notes,
        "",
        "GPU memory estimate (one device):" if s.name == "one device"
        else f"GPU memory estimate (one device of {s.world}, {s.name}):",
        f"  weights            {gib(estimate.weights):>12}   {notes['weights']}",
    ]
    if estimate.quant_constants:
        lines.append(f"  quant constants    {gib(estimate.quant_constants):>12}   bitsandbytes absmax / scales "
                     f"({built.quantized_values:,} quantized values)")
    lines += [
        f"  gradients          {gib(estimate.gradients):>12}   {notes['gradients']}",
        f"  optimizer state    {gib(estimate.optimizer):>12}   {notes['optimizer']}",
    ]
    for part, n in estimate.activations.items():
        lines.append(f"  {'activations/' + part:<22}{gib(n):>9}")
    lines += [
        f"  CUDA overhead      {gib(estimate.overhead):>12}   context + allocator slack (assumed)",
        f"  total              {gib(estimate.total):>12}",
        *([f"  load peak          {gib(estimate.load_peak):>12}   the base is loaded whole on each device before "
           f"ZeRO-3 partitions it"] if estimate.load_peak > estimate.total else []),
        f"fits in {gpu_gib:g} GiB: {'yes' if estimate.fits(gpu_gib * GIB) else 'no'}",
        "",
        f"assumptions: batch {a['batch']} per device, every row padded to {a['seq']} tokens"
        + (f" (target {a['target_seq']})" if a["target_seq"] else "")
        + f", {a['activation_bytes']}-byte activations ({a['activation_dtype']}),"
        f" gradient checkpointing {'on' if a['gradient_checkpointing'] else 'off'}, {a['attention']},"
        f" {a['lm_head']};"
        " gradient accumulation adds no memory; formulas in lit_lora/memory.py",
    ]
    if not a["devices_known"] and s.name != "one device":
        lines.append("trainer.devices is auto: counted as one device; give --trainer.devices N (and "
                     "--trainer.num_nodes) to see the state a strategy shards over them")
    return "\n".join(lines)


def state_notes(s: Sharding, optimizer: str) -> dict[str, str]:
    """What the weights, gradients and optimizer lines count on one device under ``s``."""
    def share(n: int, offloaded: bool) -> str:
        return " (offloaded to CPU memory)" if offloaded else f", 1/{n} on each device" if n > 1 else ""

    gathered = " + the largest layer gathered whole" if s.gathered_layer else ""
    master = " + a float32 master copy (DeepSpeed)" if s.master_weights else ""
    return {"weights": f"parameters + buffers at their storage dtype{share(s.weights, s.offload_parameters)}"
                       f"{gathered}",
            "gradients": f"one per trainable value{share(s.gradients, s.offload_gradients)}"
                         + (" + DDP's gradient buckets" if s.ddp_buckets and not s.offload_gradients else ""),
            "optimizer": f"{optimizer}: two moments per trainable value{master}"
                         f"{share(s.optimizer, s.offload_optimizer)}"}
