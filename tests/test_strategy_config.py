"""One reader of a Trainer's strategy (``lit_lora.cluster.strategy_config``) for the config check, the estimate and
the optimizer choice, agreeing with the DeepSpeed config Lightning's ``DeepSpeedStrategy`` really builds.

Before it, a DeepSpeed JSON file's stage and offload were unseen by the check and the estimate (ZeRO-3 read as
ZeRO-2), and ``offload_optimizer: {device: none}`` counted as an offload (CPU Adam refused for nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry

from lit_lora.cluster.strategy_config import CONFIG_ENV_VAR, deepspeed_settings, from_deepspeed_config
from lit_lora.compatibility import IncompatibleConfig, from_config, problems
from lit_lora.memory import Sharding

STRATEGIES = Path(__file__).resolve().parents[1] / "configs" / "strategies"
DEEPSPEED = "lightning.pytorch.strategies.DeepSpeedStrategy"


def lightnings_settings(strategy):
    """The settings of the config Lightning builds for ``strategy`` (a registered name or a class_path dict)."""
    if isinstance(strategy, str):
        built = StrategyRegistry.get(strategy)
    else:
        built = DeepSpeedStrategy(**strategy["init_args"])
    return from_deepspeed_config(built.config)[:3]


@pytest.mark.parametrize("strategy", [
    "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme",
    *[yaml.safe_load(f.read_text())["trainer"]["strategy"] for f in sorted(STRATEGIES.glob("deepspeed*.yaml"))],
    {"class_path": DEEPSPEED, "init_args": {"stage": 3, "zero_optimization": False}},
    {"class_path": DEEPSPEED, "init_args": {"stage": 1, "config": {"zero_optimization": {"stage": 3}}}},
], ids=str)
def test_the_settings_read_from_a_config_are_those_lightning_builds(strategy, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert deepspeed_settings(strategy)[:3] == lightnings_settings(strategy)


def zero(section: dict, tmp_path=None) -> dict:
    """A DeepSpeed strategy given ``section`` as its config, inline or (``tmp_path``) as a JSON file."""
    config = {"zero_optimization": section}
    if tmp_path is not None:
        (tmp_path / "ds.json").write_text(json.dumps(config))
        config = str(tmp_path / "ds.json")
    return {"class_path": DEEPSPEED, "init_args": {"stage": 2, "config": config}}


def test_a_json_file_config_is_read_by_the_check_and_the_estimate(tmp_path):
    strategy = zero({"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}, tmp_path)
    assert lightnings_settings(strategy) == (3, True, True)
    setup = from_config({"trainer": {"strategy": strategy, "accelerator": "gpu"},
                         "model": {"init_args": {"optim": {"name": "adamw_8bit"}}}}, cuda_available=True)
    assert (setup.zero_stage, setup.offload_optimizer) == (3, True)
    assert any("cannot offload the bitsandbytes" in p for p in problems(setup))
    sharding = Sharding.of_trainer({"strategy": strategy, "devices": 4, "accelerator": "gpu"})
    assert sharding.name == "DeepSpeed ZeRO-3" and sharding.weights == 4
    assert sharding.offload_optimizer and sharding.offload_parameters


def test_an_offload_to_device_none_is_no_offload(tmp_path):
    strategy = zero({"stage": 2, "offload_optimizer": {"device": "none"}})
    assert lightnings_settings(strategy) == (2, False, False)
    setup = from_config({"trainer": {"strategy": strategy, "accelerator": "gpu"},
                         "model": {"init_args": {"optim": {"name": "adamw_8bit"}}}}, cuda_available=True)
    assert not setup.offload_optimizer and problems(setup) == []
    assert not Sharding.of_trainer({"strategy": strategy, "devices": 2, "accelerator": "gpu"}).offload_optimizer


def test_a_config_without_zero_splits_nothing():
    """DeepSpeed's default is no ZeRO: each device holds the whole optimizer state."""
    sharding = Sharding.of_trainer({"strategy": zero({}), "devices": 4, "accelerator": "gpu"})
    assert sharding.name == "DeepSpeed ZeRO-0"
    assert (sharding.weights, sharding.gradients, sharding.optimizer) == (1, 1, 1)


def test_the_environment_config_path_is_read_as_lightning_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "env.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert deepspeed_settings("deepspeed_stage_1").stage == 3 == lightnings_settings("deepspeed_stage_1")[0]
    assert deepspeed_settings(zero({"stage": 1})).stage == 1  # an explicit config wins over the environment
    path.write_text("{")
    with pytest.raises(IncompatibleConfig, match=f"{CONFIG_ENV_VAR}: cannot read .*env.json"):
        deepspeed_settings("deepspeed")


def test_the_optimizer_choice_reads_the_same_settings(monkeypatch):
    """``optim.offloads_optimizer`` (DeepSpeed's CPU Adam or not) reads the strategy Lightning built."""
    from types import SimpleNamespace

    from lit_lora.optim import offloads_optimizer

    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    for strategy in (zero({"stage": 2, "offload_optimizer": {"device": "none"}}),
                     zero({"stage": 2, "offload_optimizer": {"device": "cpu"}}), "deepspeed_stage_3_offload"):
        built = StrategyRegistry.get(strategy) if isinstance(strategy, str) else DeepSpeedStrategy(
            **strategy["init_args"])
        assert offloads_optimizer(SimpleNamespace(strategy=built)) == deepspeed_settings(strategy).offload_optimizer
