"""Optimizers (torch and bitsandbytes) update the trainable weights; warmup schedules have the right shape."""

import pytest
import torch

from lit_lora.optim import OPTIMIZERS, OptimizerSettings, build_optimizer, lr_lambda, param_groups


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_only_trainable_weights(name):
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.LayerNorm(256), torch.nn.Linear(256, 4))
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    trainable = model[2].weight.detach().clone()
    config = build_optimizer(OptimizerSettings(name=name, lr=1e-2, warmup_steps=0, scheduler="constant"), model, None)
    model(torch.randn(8, 256)).pow(2).sum().backward()
    config["optimizer"].step()
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, trainable)
    if name != "adamw":
        assert type(config["optimizer"]).__module__.startswith("bitsandbytes")


def test_weight_decay_skips_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1  # the Linear weight only
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine"])
def test_warmup_then_schedule(scheduler):
    factor = lr_lambda(scheduler, warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(4) == pytest.approx(0.5) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    end = factor(110)
    assert end == pytest.approx(1.0 if scheduler == "constant" else 0.0, abs=1e-6)
    if scheduler != "constant":
        assert factor(60) < factor(20)


def test_a_fully_frozen_model_is_a_clear_error_at_fit():
    from lit_lora.adapters import NoAdapter

    model = NoAdapter().wrap(torch.nn.Linear(4, 4), "CAUSAL_LM")
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer(OptimizerSettings(), model, None)
