"""Optimizers (torch and bitsandbytes) update the trainable weights; warmup schedules have the right shape, and
a decaying one needs a run of known length; weight decay follows each weight's shape on one device, under FSDP
and under ZeRO-3 alike."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from harness import quiet_trainer
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lit_lora.errors import IncompatibleConfig
from lit_lora.optim import OPTIMIZERS, OptimizerSettings, build_optimizer, continue_schedule, lr_lambda, param_groups


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


class Scheduled(L.LightningModule):
    """The optimizer and schedule hooks of ``FineTuneModule``, on one linear layer; the rate of every step kept."""

    def __init__(self, settings: OptimizerSettings):
        super().__init__()
        self.linear, self.settings, self.rates = torch.nn.Linear(2, 1), settings, []

    def training_step(self, batch, batch_idx):
        return self.linear(batch[0]).pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        self.rates.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        return build_optimizer(self.settings, self, self.trainer)

    def on_train_start(self):
        continue_schedule(self.trainer, self.settings)


class Rows(IterableDataset):
    """Ten rows and no length: the run's steps are unknown until it has seen them all."""

    def __iter__(self):
        return iter([(torch.randn(2),) for _ in range(10)])


UNKNOWN_LENGTH = {"max_time": dict(max_steps=-1, max_time={"seconds": 1}),  # and Lightning's max_epochs: -1
                  "max_epochs -1": dict(max_steps=-1, max_epochs=-1, max_time={"seconds": 1}),
                  "iterable data": dict(max_steps=-1, max_epochs=1)}


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
@pytest.mark.parametrize("run", sorted(UNKNOWN_LENGTH))
def test_a_decaying_schedule_over_a_run_of_unknown_length_is_refused_before_a_step(run, scheduler):
    module = Scheduled(OptimizerSettings(lr=1.0, warmup_steps=2, scheduler=scheduler))
    data = Rows() if run == "iterable data" else TensorDataset(torch.randn(10, 2))
    with pytest.raises(IncompatibleConfig, match=f"scheduler: {scheduler} .* fix: set trainer.max_steps"):
        quiet_trainer(**UNKNOWN_LENGTH[run]).fit(module, DataLoader(data, batch_size=1))
    assert module.rates == []  # without the refusal: 1.0 through the warmup, then 0.0 to the end


def test_a_constant_schedule_needs_no_length():
    module = Scheduled(OptimizerSettings(lr=1.0, warmup_steps=2, scheduler="constant"))
    quiet_trainer(max_epochs=2).fit(module, DataLoader(Rows(), batch_size=1))
    assert module.rates == [0.5] + [1.0] * 19


@pytest.mark.parametrize("trainer", [dict(max_time={"seconds": 60}), dict(max_epochs=-1)])
def test_a_run_of_unknown_length_is_refused_before_the_base_model_loads(trainer):
    from lit_lora.models import CausalLMModule

    module = CausalLMModule("lit_lora/assets/tiny-llama", optim=OptimizerSettings(scheduler="cosine"))
    module.trainer = quiet_trainer(**trainer)
    with pytest.raises(IncompatibleConfig, match="trainer.max_steps .* unset.* or model.init_args.optim.scheduler"):
        module.setup("fit")  # Lightning's first hook with the trainer's settings, before configure_model
    assert module.model is None


def decay_of(groups: list[dict]) -> dict[int, float]:
    """``id(weight) -> weight decay`` over the optimizer's groups."""
    return {id(p): group["weight_decay"] for group in groups for p in group["params"]}


def layers() -> torch.nn.Sequential:
    """A matrix (embedding), a layer with a matrix and a bias, and a norm: two weights decayed, three not."""
    return torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))


def test_weight_decay_under_zero3_follows_the_weights_shape():
    model = layers()
    one_device = decay_of(param_groups(model, 0.1))
    for p in model.parameters():  # as deepspeed.zero.Init leaves each weight: its partition elsewhere, shape kept
        p.ds_shape, p.data = p.shape, torch.empty(0)
    assert decay_of(param_groups(model, 0.1)) == one_device
    assert sorted(one_device.values()) == [0.0, 0.0, 0.0, 0.1, 0.1]


def test_weight_decay_under_fsdp_follows_the_weights_shape(tmp_path):
    """Two ranks' FULL_SHARD layout, in this process (torch's fake process group): the Linear in a unit of its
    own, the rest in the root unit, which wraps a holder of the model as Lightning's root unit wraps the module."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    holder = torch.nn.Module()
    holder.model = model = layers()
    one_device = decay_of(param_groups(model, 0.1))
    dist.init_process_group("fake", rank=0, world_size=2, store=fake_pg.FakeStore())
    try:
        root = FSDP(holder, auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}), use_orig_params=True,
                    device_id=torch.device("cpu"))
        assert all(p.ndim == 1 for p in model.parameters())  # each a view of this rank's shard, or empty
        trainer = SimpleNamespace(strategy=SimpleNamespace(model=root))
        config = build_optimizer(OptimizerSettings(weight_decay=0.1, scheduler="constant"), model, trainer)
        assert decay_of(config["optimizer"].param_groups) == one_device
        assert decay_of(param_groups(root, 0.1)) == one_device
    finally:
        dist.destroy_process_group()
