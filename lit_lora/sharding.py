"""Moved to ``lit_lora.cluster.sharding``; kept so existing configs keep working.

That module holds sharded-model export helpers and the FSDP wrap policy. Class paths such as
``lit_lora.sharding.X`` in YAML (and imports from here) resolve to the same objects as
``lit_lora.cluster.sharding.X``; new code imports from ``lit_lora.cluster.sharding``.
"""

from lit_lora.cluster.sharding import (
    DecoderLayerWrapPolicy,
    gathered_state_dict,
    is_zero3_partitioned,
    layer_classes,
    outside_zero3_init,
    partitioned_loading,
    partitioned_share,
    zero3_config,
)

__all__ = [
    "DecoderLayerWrapPolicy",
    "gathered_state_dict",
    "is_zero3_partitioned",
    "layer_classes",
    "outside_zero3_init",
    "partitioned_loading",
    "partitioned_share",
    "zero3_config",
]
