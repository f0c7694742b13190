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


def small_model(arch: str):
    """A two-layer model of ``arch`` with sdpa attention (no residual dropout: its masks are not estimated)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=704, num_attention_heads=8,
                                            num_key_value_heads=2, num_hidden_layers=2, vocab_size=512,
                                            attn_implementation="sdpa"))
    return PhiForCausalLM(PhiConfig(hidden_size=256, intermediate_size=1024, num_attention_heads=8,
                                    num_hidden_layers=2, vocab_size=512, partial_rotary_factor=0.5, resid_pdrop=0.0,
                                    embd_pdrop=0.0, hidden_act="gelu_new", attn_implementation="sdpa"))


def build(arch: str, dropout, dtype, mixed: bool):
    """``small_model(arch)`` with LoRA on every linear layer unless ``dropout`` is None. The adapter is float32
    (peft's default, what lit-lora trains under mixed precision) except in pure bf16, where Lightning's
    ``bf16-true`` casts the whole module, adapter included."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = small_model(arch).to(dtype)
    config = model.config
    if dropout is not None:
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear")
        model = get_peft_model(model, lora, autocast_adapter_dtype=mixed or dtype == torch.float32)
    return model.train(), config


def kept_bytes(model, layer, batch: int, mixed: bool) -> int:
    """Bytes of the distinct non-parameter storages ``layer`` saves for backward in one forward of ``batch`` rows
    (the last one padded, so attention gets a mask as in training), the shared attention mask left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        is_mask = tensor.dim() == 4 and tensor.shape[1] == 1 and tensor.shape[-1] == tensor.shape[-2] == SEQ
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and not is_mask and tensor.numel():
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    layer.register_forward_pre_hook(lambda *_: hooks.__enter__())
    layer.register_forward_hook(lambda *_: hooks.__exit__(None, None, None))
    ids = torch.randint(0, 512, (batch, SEQ))
    mask = torch.ones_like(ids)
    mask[-1, SEQ // 2:] = 0
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    with autocast:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    layer._forward_pre_hooks.clear()
    layer._forward_hooks.clear()
    return sum(kept.values())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_formula_matches_what_autograd_keeps(case, arch):
    dropout, dtype, mixed = CASES[case]
    model, config = build(arch, dropout, dtype, mixed)
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.1"))
    per_token = (kept_bytes(model, layer, 4, mixed) - kept_bytes(model, layer, 2, mixed)) / (2 * SEQ)

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
