"""``FusedLoraLinear`` computes what peft's ``lora.Linear`` computes, value and gradients, and hands every case
its fast path does not cover to peft's own forward; what it saves is a plain peft adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear

from lit_lora.adapters import LoRA, QLoRA, cpu_dropout
from lit_lora.adapters.fused_lora import FusedLoraLinear


def model_pair(r: int = 4, alpha: float = 8, dropout: float = 0.0, **lora_kwargs):
    """The same two-layer model with peft's LoRA layers and with ``FusedLoraLinear``, equal weights, lora_B
    not zero (so the update counts)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 8))
    plain_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["0", "2"],
                              **lora_kwargs)
    fused_config = copy.deepcopy(plain_config)
    fused_config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    plain = get_peft_model(copy.deepcopy(base), plain_config)
    fused = get_peft_model(copy.deepcopy(base), fused_config)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(std=0.3)
    fused.load_state_dict(plain.state_dict())
    assert {type(m) for m in fused.modules()} >= {FusedLoraLinear}
    return plain, fused


class CpuDropout(torch.nn.Module):
    """peft's dropout drawn as ``FusedLoraLinear`` draws it on a CPU (``cpu_dropout``, tested on its own in
    ``test_cpu_dropout.py``), so that both models drop the same elements."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_dropout.applies(torch.nn.Dropout(self.p).train(self.training), x):
            return cpu_dropout.dropout(x, self.p)
        return torch.nn.functional.dropout(x, self.p, self.training)


def same_dropout_draws(plain) -> None:
    for layer in plain.modules():
        if isinstance(layer, PeftLoraLinear):
            for name, module in layer.lora_dropout.items():
                if isinstance(module, torch.nn.Dropout):
                    layer.lora_dropout[name] = CpuDropout(module.p)


def forward_backward(model, x: torch.Tensor, seed: int = 0):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both models
    out = model(x)
    (out.square().mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("r, alpha, dropout", [(4, 8, 0.0), (4, 6, 0.0), (3, 7, 0.1), (8, 16, 0.2)])
def test_value_and_gradients_equal_peft(r, alpha, dropout, device):
    plain, fused = (model.to(device) for model in model_pair(r, alpha, dropout))
    same_dropout_draws(plain)
    x = torch.randn(4, cpu_dropout.MIN_ELEMENTS // 64, 16, device=device)  # batch, sequence, features: the LM shape
    assert cpu_dropout.applies(torch.nn.Dropout(dropout).train(), x) == (dropout > 0 and device == "cpu")
    for model in (plain, fused):
        model.train()
    layers = [m for m in fused.modules() if isinstance(m, FusedLoraLinear)]
    assert len(layers) == 2 and all(m.fusable_adapter(x, {}) == "default" for m in layers)  # the fast path runs
    (want, want_grads), (got, got_grads) = forward_backward(plain, x), forward_backward(fused, x)
    ulps = 4 * torch.finfo(torch.float32).eps * float(want.abs().max())  # rounding of a sum in another order
    torch.testing.assert_close(got, want, rtol=1e-5, atol=ulps)
    assert set(got_grads) == set(want_grads) and any("lora_A" in n for n in got_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_power_of_two_scaling_is_bit_identical():
    """alpha = 2r (scaling 2), lit-lora's default: the sum is peft's to the last bit."""
    plain, fused = model_pair(4, 8)
    x = torch.randn(2, 7, 16)
    assert torch.equal(fused(x), plain(x))


def backward_nodes(tensor: torch.Tensor) -> set[str]:
    """The names of every node of ``tensor``'s backward graph."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def test_the_backward_copies_no_gradient():
    """The update goes in place into the base product's own 2-D tensor, not into a view of it: autograd would
    answer an in-place product on a view with ``CopySlices`` and ``AsStridedBackward0``, a copy of the whole
    gradient per layer (about 9% of a CPU step of the bench's model, ``bench/lora_update.py``)."""
    plain, fused = model_pair()
    nodes = backward_nodes(fused(torch.randn(3, 5, 16)))
    assert "AddmmBackward0" in nodes  # the fused product ran
    assert not nodes & {"CopySlices", "AsStridedBackward0"}, nodes


def test_the_fast_path_traces_into_one_graph():
    """``compile: true`` compiles the decoder layers, so every check of the fast path must trace with dynamo:
    one graph break per adapted layer would undo what compiling gains. Training mode, with dropout."""
    import torch._dynamo

    plain, fused = model_pair(dropout=0.1)
    fused.train()
    layers = fused.base_model.model
    explained = torch._dynamo.explain(layers)(torch.randn(4, cpu_dropout.MIN_ELEMENTS // 64, 16))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("device, dtype", [("cpu", torch.bfloat16), pytest.param("cuda", torch.bfloat16,
                                            marks=pytest.mark.gpu), pytest.param("cuda", torch.float16,
                                                                                 marks=pytest.mark.gpu)])
def test_autocast_stays_within_half_precision_rounding_of_peft(device, dtype):
    plain, fused = (model.to(device) for model in model_pair(4, 8))
    x = torch.randn(2, 7, 16, device=device)
    with torch.autocast(device, dtype=dtype):
        want, got = plain(x), fused(x)
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    got.float().square().mean().backward()  # the in-place product under autocast has a backward
    assert all(p.grad is not None for n, p in fused.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("case", ["disabled", "merged", "dora", "lora_bias", "two_adapters", "bf16_base"])
def test_what_the_fast_path_does_not_cover_runs_peft(case, monkeypatch):
    extra = {"use_dora": True} if case == "dora" else {"lora_bias": True} if case == "lora_bias" else {}
    plain, fused = model_pair(**extra)
    x = torch.randn(2, 3, 16)
    if case == "merged":
        plain.merge_adapter(), fused.merge_adapter()
    if case == "two_adapters":
        for model in (plain, fused):
            model.add_adapter("other", LoraConfig(r=2, target_modules=["0", "2"]))
            model.base_model.set_adapter(["default", "other"])
    if case == "bf16_base":  # base weights in bfloat16, adapter in float32, no autocast: peft's float32 update
        for model in (plain, fused):
            for module in model.modules():
                if isinstance(module, PeftLoraLinear):
                    module.base_layer.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    fast = FusedLoraLinear.fusable_adapter
    taken = []
    monkeypatch.setattr(FusedLoraLinear, "fusable_adapter", lambda self, *a: taken.append(fast(self, *a)) or taken[-1])
    if case == "disabled":
        with plain.disable_adapter(), fused.disable_adapter():
            want, got = plain(x), fused(x)
    else:
        want, got = plain(x), fused(x)
    assert taken and all(name is None for name in taken), taken  # peft's forward ran
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_lora_wraps_plain_layers_with_it_and_leaves_quantized_ones_to_peft():
    def layers(model):
        return {type(m).__name__ for m in model.modules() if isinstance(m, PeftLoraLinear)}

    def base():
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    assert layers(LoRA(r=2, target_modules=["0", "2"]).wrap(base(), None)) == {"FusedLoraLinear"}
    quantized = base()
    quantized.is_quantized = True  # transformers' mark of a model loaded with a quantization config
    assert layers(LoRA(r=2, target_modules=["0", "2"]).wrap(quantized, None)) == {"Linear"}
    assert not LoRA().peft_config("CAUSAL_LM")._custom_modules and not QLoRA().peft_config("CAUSAL_LM")._custom_modules


def test_the_saved_adapter_is_plain_peft(tmp_path):
    plain, fused = model_pair()
    fused.save_pretrained(tmp_path)
    assert "custom" not in (tmp_path / "adapter_config.json").read_text()
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 8))
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in fused.get_base_model().state_dict().items()
                           if "lora_" not in k})
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert not any(isinstance(m, FusedLoraLinear) for m in loaded.modules())
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(loaded(x), fused(x), rtol=0, atol=0)
