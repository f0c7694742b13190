"""``cpu_dropout.dropout`` is torch's dropout distribution from fewer random draws: each element dropped
independently with probability ``p``, the kept ones scaled exactly as ``torch.nn.functional.dropout`` scales
them, repeatable under ``torch.manual_seed``, a one-byte mask kept for the backward; ``FusedLoraLinear`` uses it
for peft's dropout on CPU tensors in training only."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lit_lora.adapters.cpu_dropout import MIN_ELEMENTS, applies, dropout, keep_mask
from lit_lora.adapters.fused_lora import FusedLoraLinear


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_element_is_dropped_with_probability_p_independently(p):
    torch.manual_seed(0)
    n = 4_000_000
    dropped = ~keep_mask(torch.Size([n]), p)
    tolerance = 5 * math.sqrt(p * (1 - p) / (n // 2))  # five standard deviations of a half's dropped share
    for half in (dropped[0::2], dropped[1::2]):  # the low and the high bits of a draw: two thresholds
        assert abs(half.float().mean().item() - p) < tolerance
    both = (dropped[0::2] & dropped[1::2]).float().mean().item()  # two elements of one draw are independent
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (n // 2))
    neighbours = (dropped[1:-1:2] & dropped[2::2]).float().mean().item()  # and so are consecutive draws
    assert abs(neighbours - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (n // 2))


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_kept_values_are_scaled_as_torch_scales_them(p):
    x = torch.randn(3, 5, 7)  # an odd number of elements: the last draw decides one element
    out = dropout(x, p)
    kept = out != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(out[kept], x[kept] * (1 / (1 - p)))
    reference = torch.nn.functional.dropout(x, p, training=True)  # torch's kept values, bit for bit
    both = kept & (reference != 0)
    assert torch.equal(out[both], reference[both])


def test_the_same_seed_draws_the_same_mask_and_the_next_call_another():
    torch.manual_seed(3)
    first, second = keep_mask(torch.Size([64, 64]), 0.2), keep_mask(torch.Size([64, 64]), 0.2)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([64, 64]), 0.2), first)
    assert not torch.equal(first, second)


def test_the_gradient_is_the_mask_scaled_and_only_a_boolean_mask_is_kept():
    x = torch.randn(4, 33, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out = dropout(x, 0.25)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert saved == [torch.bool]
    torch.testing.assert_close(x.grad, grad * (out != 0) * (1 / 0.75), rtol=0, atol=0)


def test_it_stands_in_for_a_training_nn_dropout_on_a_cpu_only():
    x = torch.randn(MIN_ELEMENTS // 64, 64)
    module = torch.nn.Dropout(0.1)
    assert applies(module.train(), x)
    assert not applies(module.eval(), x)
    assert not applies(torch.nn.Dropout(0.0).train(), x)
    assert not applies(type("OtherDropout", (torch.nn.Dropout,), {})(0.1).train(), x)  # someone else's dropout
    assert not applies(module.train(), x.to(torch.int64))
    assert not applies(module.train(), x[:-1])  # a small tensor: torch's one call is faster


def test_fused_lora_draws_its_dropout_here_in_training():
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.5, target_modules=["0"])
    config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), config)
    layer = model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(MIN_ELEMENTS // 8, 8)
    model.train()
    torch.manual_seed(1)
    got = model(x)
    torch.manual_seed(1)
    keep = keep_mask(x.shape, 0.5)
    update = (x * keep * 2.0) @ layer.lora_A["default"].weight.t() @ layer.lora_B["default"].weight.t() * 2.0
    torch.testing.assert_close(got, layer.base_layer(x) + update)
    model.eval()
    assert torch.equal(model(x), model(x))  # no dropout outside training


class TwoDropoutsOfOneInput(torch.nn.Module):
    """peft's q, k and v projections: dropouts of the same input, each its own mask."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return dropout(x, 0.5, site=self.a), dropout(x, 0.5, site=self.b)


def test_compiled_dropout_draws_the_eager_masks_one_per_site():
    """Under ``torch.compile`` the mask is one opaque operator: the draws are the eager ones under the same seed,
    and two sites over one input draw two masks (a graph compiler would merge two calls with equal arguments)."""
    x = torch.randn(64, 64, requires_grad=True)
    compiled = TwoDropoutsOfOneInput()
    compiled.compile(dynamic=True)
    torch.manual_seed(0)
    got = compiled(x)
    torch.manual_seed(0)
    want = TwoDropoutsOfOneInput()(x)
    assert not torch.equal(got[0] != 0, got[1] != 0)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    sum(out.sum() for out in got).backward()
    torch.testing.assert_close(x.grad, ((want[0] != 0).float() + (want[1] != 0).float()) * 2.0, rtol=0, atol=0)
