"""``lit-lora estimate``'s activation formula against what autograd really keeps, on a CPU.

A decoder layer's saved tensors are recorded with ``torch.autograd.graph.saved_tensors_hooks`` (each storage
once, parameters left out) at two batch sizes; the difference per token is what the layer keeps for each token,
the quantity ``memory.layer_values_per_token`` estimates. The cases are the settings users train with: LoRA on a
bf16 base under bf16-mixed (peft's float32 adapter makes each LoRA layer keep its own copy of its input), LoRA
in pure bf16, LoRA with dropout, and full fine-tuning in float32 with and without bf16 autocast, on a Llama layer
(two RMSNorms, GQA, gated MLP) and a Phi layer (one LayerNorm read by attention and MLP in parallel, partial
rotary, a plain MLP with the Python-written ``gelu_new``).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from lit_lora.estimate import trainable_kept_values
from lit_lora.memory import Shape, layer_values_per_token

SEQ = 128
CASES = {  # id -> (adapter: LoRA dropout or None for full fine-tuning, weights' dtype, autocast to bf16)
    "lora-bf16-mixed": (0.0, torch.bfloat16, True),
    "lora-bf16-true": (0.0, torch.bfloat16, False),
    "lora-dropout-fp32": (0.1, torch.float32, False),
    "full-fp32-bf16-mixed": (None, torch.float32, True),
    "full-fp32": (None, torch.float32, False),
}
ARCHITECTURES = ["llama", "phi"]


def small_model(arch: str, attention: str = "sdpa"):
    """A two-layer model of ``arch`` (no residual dropout: its masks are not estimated)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=704, num_attention_heads=8,
                                            num_key_value_heads=2, num_hidden_layers=2, vocab_size=512,
                                            attn_implementation=attention))
    return PhiForCausalLM(PhiConfig(hidden_size=256, intermediate_size=1024, num_attention_heads=8,
                                    num_hidden_layers=2, vocab_size=512, partial_rotary_factor=0.5, resid_pdrop=0.0,
                                    embd_pdrop=0.0, hidden_act="gelu_new", attn_implementation="sdpa"))


def build(arch: str, dropout, dtype, mixed: bool, attention: str = "sdpa"):
    """``small_model(arch)`` with LoRA on every linear layer unless ``dropout`` is None. The adapter is float32
    (peft's default, what lit-lora trains under mixed precision) except in pure bf16, where Lightning's
    ``bf16-true`` casts the whole module, adapter included."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = small_model(arch, attention).to(dtype)
    config = model.config
    if dropout is not None:
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear")
        model = get_peft_model(model, lora, autocast_adapter_dtype=mixed or dtype == torch.float32)
    return model.train(), config


def padded_rows(batch: int) -> dict:
    """``batch`` rows of ``SEQ`` tokens, the last one half padding, so attention gets a mask."""
    ids = torch.randint(0, 512, (batch, SEQ))
    mask = torch.ones_like(ids)
    mask[-1, SEQ // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def packed_row(rows: int) -> dict:
    """``rows`` rows of ``SEQ`` tokens packed into one flattened row, positions restarting at every row."""
    return {"input_ids": torch.randint(0, 512, (1, rows * SEQ)),
            "position_ids": torch.arange(SEQ).repeat(rows)[None]}


def kept_bytes(model, layer, inputs: dict, mixed: bool) -> int:
    """Bytes of the distinct non-parameter storages ``layer`` saves for backward in one forward of ``inputs``,
    what every layer shares left out: the attention mask and the rotary position embeddings (per token once
    packed rows are flattened, but once for the model, not a layer's)."""
    shared = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        is_mask = tensor.dim() == 4 and tensor.shape[1] == 1 and tensor.shape[-1] == tensor.shape[-2] == SEQ
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in shared and not is_mask and tensor.numel():
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    def enter(_, args, kwargs):
        shared.update(t.untyped_storage().data_ptr() for t in kwargs.get("position_embeddings") or ())
        hooks.__enter__()

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    layer.register_forward_pre_hook(enter, with_kwargs=True)
    layer.register_forward_hook(lambda *_: hooks.__exit__(None, None, None))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    with autocast:
        model(**inputs, use_cache=False)
    layer._forward_pre_hooks.clear()
    layer._forward_hooks.clear()
    return sum(kept.values())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_formula_matches_what_autograd_keeps(case, arch):
    dropout, dtype, mixed = CASES[case]
    model, config = build(arch, dropout, dtype, mixed)
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.1"))
    per_token = (kept_bytes(model, layer, padded_rows(4), mixed) - kept_bytes(model, layer, padded_rows(2), mixed)) \
        / (2 * SEQ)

    value_bytes = 2 if mixed or dtype == torch.bfloat16 else 4
    shape = Shape.from_config(config, gated_mlp=arch == "llama")
    kept = trainable_kept_values(model, shape, mixed, value_bytes)
    estimated = layer_values_per_token(shape, projection_inputs=kept, value_bytes=value_bytes) * value_bytes
    if dropout:  # a CPU keeps dropout's mask at the input's dtype, CUDA (what the estimate is for) a byte a value
        from peft.tuners.lora import LoraLayer

        estimated += sum(m.in_features for m in layer.modules() if isinstance(m, LoraLayer)) * (value_bytes - 1)
    # the formula leaves out a few values a token (a norm's statistics, attention's log-sum-exp per head); on Phi
    # it follows CUDA where a CPU differs by about one hidden-width value: CPU autocast keeps LayerNorm's input in
    # bf16 (CUDA: float32), and the CPU's SDPA output layout makes the output projection copy it
    assert estimated == pytest.approx(per_token, rel=0.03 if arch == "llama" else 0.05), (estimated, per_token)


@pytest.mark.parametrize("case", ["lora-bf16-mixed", "lora-bf16-true"])
def test_a_varlen_kernel_keeps_keys_and_values_at_their_own_heads(case, monkeypatch):
    """Packed rows through ``torch_varlen``: PyTorch's ``varlen_attn`` (its operator's autograd as shipped, over a
    CPU reference of FlashAttention, this CPU standing in for a GPU with the kernel) keeps q, k and v as the layer
    hands them over, k and v at the key-value heads: what the estimate counts for it (``kv_repeated=False``), 2 x
    (8 - 2) x 32 values a token fewer than SDPA with a mask, which repeats k and v to the query heads (above)."""
    from flash_reference import flash_kernel_on_cpu

    from lit_lora.models import varlen_attention

    dropout, dtype, mixed = CASES[case]
    varlen_attention.register()
    monkeypatch.setattr(varlen_attention, "kernel_device", lambda device: True)
    model, config = build("llama", dropout, dtype, mixed, attention="torch_varlen")
    layer = model.get_base_model().model.layers[1]
    with flash_kernel_on_cpu([]) as calls:
        per_token = (kept_bytes(model, layer, packed_row(4), mixed)
                     - kept_bytes(model, layer, packed_row(2), mixed)) / (2 * SEQ)
    assert len(calls) == 2 * config.num_hidden_layers  # every layer ran the kernel, none fell back to sdpa

    shape = Shape.from_config(config, gated_mlp=True)
    kept = trainable_kept_values(model, shape, mixed, 2)
    estimated = {repeated: layer_values_per_token(shape, projection_inputs=kept, kv_repeated=repeated) * 2
                 for repeated in (False, True)}
    assert estimated[False] == pytest.approx(per_token, rel=0.01), (estimated, per_token)
    assert estimated[True] - estimated[False] == 2 * (shape.q_dim - shape.kv_dim) * 2


def test_checkpointed_layer_inputs_are_counted_at_the_residual_streams_dtype(tiny_model):
    """QLoRA's preparation casts the embedding to float32, so the hidden states between layers, which gradient
    checkpointing keeps, are float32 even with a bf16 compute dtype: the estimate reads that from the model it
    builds, and the model lit-lora trains feeds its layers float32."""
    from lit_lora.adapters import QLoRA
    from lit_lora.estimate import build, embedding_bytes
    from lit_lora.models import CausalLMModule

    def module():
        return CausalLMModule(tiny_model("llama"), adapter=QLoRA(r=4, compute_dtype="bfloat16"))

    assert embedding_bytes(build(module()).model) == 4
    trained = module()
    trained.configure_model()
    seen = []
    layer = next(m for name, m in trained.model.named_modules() if name.endswith("layers.0"))
    layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert seen == [torch.float32]
