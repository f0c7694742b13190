"""What a Trainer ``strategy`` value runs: its family, and its DeepSpeed settings read as Lightning's
``DeepSpeedStrategy`` reads them.

Lightning uses an explicit DeepSpeed ``config`` (a dict, the path of a JSON file, or ``$PL_DEEPSPEED_CONFIG_PATH``)
as it is and then ignores the strategy's own ``stage`` / ``offload_*`` arguments; without one it builds the config
from those arguments. The config check (``compatibility``), the memory estimate (``memory.Sharding``) and the
optimizer choice (``optim.offloads_optimizer``) all read the settings here, so they agree with each other and with
the run::

    >>> strategy = {"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy", "init_args": {"stage": 2,
    ...             "config": {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "none"}}}}}
    >>> s = deepspeed_settings(strategy)
    >>> (s.stage, s.offload_optimizer, s.offload_parameters)
    (3, False, False)
    >>> deepspeed_settings("deepspeed_stage_3_offload")[:3]
    (3, True, True)
    >>> deepspeed_settings("ddp") is None, strategy_family("fsdp_cpu_offload"), strategy_family(strategy)
    (True, 'fsdp', 'deepspeed')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

from lit_lora.errors import IncompatibleConfig

CONFIG_ENV_VAR = "PL_DEEPSPEED_CONFIG_PATH"  # Lightning's DeepSpeedStrategy.DEEPSPEED_ENV_VAR
OFFLOAD_DEVICES = ("cpu", "nvme")


class DeepSpeedSettings(NamedTuple):
    """``stage``: the ZeRO stage (0: no ZeRO). ``config``: the DeepSpeed config Lightning is given (or, for a
    strategy object, the one it built); None when Lightning builds it from the strategy's arguments."""

    stage: int
    offload_optimizer: bool
    offload_parameters: bool
    config: Optional[dict] = None


def field(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` of a YAML dict, a jsonargparse Namespace or an object's attribute; ``default`` where absent."""
    if node is None:
        return default
    if isinstance(node, dict) or hasattr(node, "get"):
        return node.get(key, default)
    return getattr(node, key, default)


def strategy_family(strategy: Any) -> str:
    """``deepspeed``, ``fsdp``, ``ddp``, ``auto`` or the lower-case name of another strategy (registered name,
    ``class_path`` config or strategy object)."""
    if strategy is None:
        return "auto"
    name = str(strategy if isinstance(strategy, str) else field(strategy, "class_path") or type(strategy).__name__)
    for family in ("deepspeed", "fsdp", "ddp"):
        if family in name.lower().rsplit(".", 1)[-1]:
            return family
    return name.rsplit(".", 1)[-1].lower()


def deepspeed_settings(strategy: Any, env: Optional[dict] = None) -> Optional[DeepSpeedSettings]:
    """The DeepSpeed settings of a Trainer ``strategy`` value (a registered name, a ``class_path`` config or a
    strategy object); None when it is not DeepSpeed."""
    env = os.environ if env is None else env
    if strategy_family(strategy) != "deepspeed":
        return None
    if isinstance(strategy, str):
        name = strategy.lower()
        if env.get(CONFIG_ENV_VAR):
            return from_deepspeed_config(read_config(env[CONFIG_ENV_VAR], CONFIG_ENV_VAR))
        stage = int(name.split("_stage_")[1][:1]) if "_stage_" in name else 2  # Lightning's registered names
        return DeepSpeedSettings(stage, "offload" in name, name.startswith("deepspeed_stage_3_offload"))
    class_path = field(strategy, "class_path")
    args = field(strategy, "init_args", None) if class_path else vars(strategy)
    config = field(args, "config", None) or env.get(CONFIG_ENV_VAR)
    if config:
        where = "trainer.strategy.init_args.config" if field(args, "config", None) else CONFIG_ENV_VAR
        return from_deepspeed_config(read_config(config, where))
    if not field(args, "zero_optimization", True):
        return DeepSpeedSettings(0, False, False)
    return DeepSpeedSettings(int(field(args, "stage", 2) or 2), bool(field(args, "offload_optimizer", False)),
                             bool(field(args, "offload_parameters", False)))


def read_config(config: Any, where: str) -> dict:
    """A DeepSpeed config as a dict: itself, or the JSON file it names (an unreadable file is the config's error)."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise IncompatibleConfig(f"{where}: cannot read {path} as a DeepSpeed JSON config ({err})") from None
    config = config.as_dict() if hasattr(config, "as_dict") else config
    if not isinstance(config, dict):
        raise IncompatibleConfig(f"{where}: a DeepSpeed config is a mapping or the path of a JSON file, "
                                 f"got {type(config).__name__}")
    return config


def from_deepspeed_config(config: dict) -> DeepSpeedSettings:
    """The settings of a DeepSpeed config dict (DeepSpeed's defaults: no ZeRO, nothing offloaded)."""
    zero = config.get("zero_optimization") or {}

    def offloaded(section: str) -> bool:
        return str((zero.get(section) or {}).get("device", "none")).lower() in OFFLOAD_DEVICES

    return DeepSpeedSettings(int(zero.get("stage", 0)), offloaded("offload_optimizer"), offloaded("offload_param"),
                             config)
