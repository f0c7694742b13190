"""Fine-tuning methods: one class per method, each builds its peft config (and quantization config)."""

from lit_lora.adapters.base import Adapter, AdapterSpec, check_target_modules, count_parameters, parameter_report
from lit_lora.adapters.lora import FullFineTuning, LoRA, NoAdapter, QLoRA
from lit_lora.adapters.prompt import PrefixTuning, PromptTuning, PTuning

__all__ = ["Adapter", "AdapterSpec", "FullFineTuning", "LoRA", "NoAdapter", "PTuning", "PrefixTuning", "PromptTuning",
           "QLoRA", "check_target_modules", "count_parameters", "parameter_report"]
