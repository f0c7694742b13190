"""Full fine-tuning, LoRA and QLoRA: peft's LoRA layers over a plain or bitsandbytes-quantized base.

    from lit_lora.adapters import QLoRA
    adapter = QLoRA(r=16, alpha=16, target_modules=["q_proj", "v_proj"], quant_type="nf4")
    model = adapter.wrap(AutoModelForCausalLM.from_pretrained(path,
                         quantization_config=adapter.quantization_config()), "CAUSAL_LM")
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence, Union

from torch import nn

from lit_lora.adapters.base import Adapter, AdapterSpec, check_target_modules, require, to_dtype


class FullFineTuning(Adapter):
    """Every weight of the model trains; no peft wrapper."""

    method = "full"

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        model.requires_grad_(True)
        return model


class NoAdapter(Adapter):
    """The pretrained model as it is, every weight frozen: baselines and in-context (zero / k-shot) evaluation."""

    method = "none"

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        model.requires_grad_(False)
        return model


class LoRA(Adapter):
    """Low-rank adapters (peft ``LoraConfig``) on a frozen base.

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: Dropout on the adapter input.
        bias: Which biases train: ``none``, ``all`` or ``lora_only``.
        target_modules: Module names to adapt (e.g. ``[q_proj, v_proj]``), ``all-linear``, or a full-match regex.
            A name that matches no module is an error.
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)``.
        use_dora: Weight-decomposed LoRA (DoRA).
        modules_to_save: Extra modules trained in full and saved with the adapter (e.g. a classification head).
    """

    method = "lora"

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.05,
        bias: Literal["none", "all", "lora_only"] = "none",
        target_modules: Union[list[str], str] = "all-linear",
        use_rslora: bool = False,
        use_dora: bool = False,
        modules_to_save: Optional[list[str]] = None,
    ):
        require(self.method, "r", r, isinstance(r, int) and r >= 1, "a positive integer")
        require(self.method, "alpha", alpha, alpha > 0, "positive")
        require(self.method, "dropout", dropout, 0 <= dropout < 1, "in [0, 1)")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.bias = bias
        self.target_modules = target_modules
        self.use_rslora = use_rslora
        self.use_dora = use_dora
        self.modules_to_save = modules_to_save

    def spec(self) -> AdapterSpec:
        return AdapterSpec(method=self.method, mergeable=True)

    def with_trained_modules(self, names: Sequence[str]) -> "LoRA":
        adapter = copy.copy(self)
        adapter.modules_to_save = sorted(set(self.modules_to_save or []) | set(names))
        return adapter

    def peft_config(self, task_type: str):
        from peft import LoraConfig

        return LoraConfig(
            task_type=task_type,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            bias=self.bias,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            modules_to_save=copy.copy(self.modules_to_save),  # peft appends its SEQ_CLS head names to it
        )

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        from peft import get_peft_model

        from lit_lora.adapters.fused_lora import FusedLoraLinear, holds_quantized_layers

        check_target_modules(model, self.target_modules)
        check_target_modules(model, self.modules_to_save, what="modules_to_save")
        config = self.peft_config(task_type)
        if not self.spec().quantized and not holds_quantized_layers(model):  # peft's own layers for bitsandbytes'
            config._register_custom_module({nn.Linear: FusedLoraLinear})  # the update inside its matmul
        return get_peft_model(model, config)


class QLoRA(LoRA):
    """LoRA over a bitsandbytes-quantized, frozen base (Dettmers et al., 2023).

    Args:
        bits: 4 (NF4 / FP4) or 8 (LLM.int8) bit base weights.
        quant_type: 4-bit data type, ``nf4`` or ``fp4``.
        double_quant: Quantize the quantization constants too (saves ~0.4 bit per weight).
        compute_dtype: Dtype the 4-bit layers compute in (``bfloat16``, ``float16``, ``float32``).
        quant_storage: Storage dtype of packed 4-bit weights (default uint8). Under FSDP it must equal the model
            dtype; under 16-bit DeepSpeed / FSDP a floating-point one must be the precision's (see compatibility).
        gradient_checkpointing: Passed to peft's ``prepare_model_for_kbit_training``: QLoRA's default for
            ``model.init_args.gradient_checkpointing``, which decides when it is set (``false`` turns it off).
    """

    method = "qlora"

    def __init__(
        self,
        bits: Literal[4, 8] = 4,
        quant_type: Literal["nf4", "fp4"] = "nf4",
        double_quant: bool = True,
        compute_dtype: str = "bfloat16",
        quant_storage: Optional[str] = None,
        gradient_checkpointing: bool = True,
        **lora_kwargs,
    ):
        """``lora_kwargs`` are LoRA's (r, alpha, dropout, target_modules …); the CLI lists them too."""
        super().__init__(**lora_kwargs)
        self.bits = bits
        self.quant_type = quant_type
        self.double_quant = double_quant
        self.compute_dtype = compute_dtype
        self.quant_storage = quant_storage
        self.gradient_checkpointing = gradient_checkpointing

    def spec(self) -> AdapterSpec:
        return AdapterSpec(method=self.method, bits=self.bits, storage_dtype=self.quant_storage,
                           compute_dtype=self.compute_dtype, double_quant=self.double_quant,
                           kbit_checkpointing=self.gradient_checkpointing, mergeable=True)

    def quantization_config(self):
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        kwargs = {}
        if self.quant_storage is not None:
            kwargs["bnb_4bit_quant_storage"] = to_dtype(self.quant_storage)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=to_dtype(self.compute_dtype),
            **kwargs,
        )

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        for module in model.modules():
            # bitsandbytes repacks 4-bit weights into a CPU inference layout at the first eval forward
            # (a sanity check or validation); training through that layout then fails. Keep the training one.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=self.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return super().wrap(model, task_type)
