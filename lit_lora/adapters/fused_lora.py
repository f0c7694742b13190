"""peft's LoRA layer with the update added inside the matrix product that computes it.

peft's ``lora.Linear`` adds ``lora_B(lora_A(x)) * scaling`` to the base layer's output: the scaling and the sum are
two more passes over the layer's whole output in the forward, and the scaling one more in the backward. Here
the product accumulates straight into the base output (``result.addmm_(lora_A(x), lora_Bᵀ, alpha=scaling)``,
one BLAS call with ``beta=1``), so those passes go and the scaling falls on the rank-``r`` factors in the
backward. The base product is taken on the rows flattened to 2-D, so ``result`` owns its storage: an in-place
product on a view of it would cost the backward a copy of the whole output gradient (autograd's ``CopySlices``).
The value is peft's (to the last bit where ``scaling`` is a power of two, as ``alpha = 2r`` gives), the
parameters and the saved adapter are peft's own, and every case this fast path does not cover (merged or
disabled adapters, several active ones, DoRA and other variants, a LoRA bias, ZeRO-3's partitioned weights, a
base in another dtype than the adapter without autocast) runs peft's forward::

    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from lit_lora.adapters.fused_lora import FusedLoraLinear
    >>> config = LoraConfig(r=2, lora_alpha=4, target_modules=["0"])
    >>> config._register_custom_module({torch.nn.Linear: FusedLoraLinear})  # peft's hook for custom LoRA layers
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), config)
    >>> type(model.base_model.model[0]).__name__
    'FusedLoraLinear'

Registered by ``lit_lora.adapters.LoRA.wrap`` for unquantized bases: bitsandbytes' layers are ``nn.Linear``
subclasses, and they keep peft's own LoRA layers (QLoRA, or a checkpoint saved quantized).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.lora import Linear as PeftLoraLinear

from lit_lora.adapters import cpu_dropout


class FusedLoraLinear(PeftLoraLinear):
    """``lora.Linear`` whose vanilla-LoRA forward adds the update with one ``addmm_`` (see the module docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.fusable_adapter(x, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        self._check_forward_args(x, *args, **kwargs)
        rows = x.reshape(-1, x.shape[-1])  # the base layer's product as a 2-D tensor of its own, not a view
        result = self.base_layer(rows, *args, **kwargs)
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        update_in = lora_A(self.dropped(name, self._cast_input_dtype(x, lora_A.weight.dtype)))
        update_in = update_in.reshape(-1, update_in.shape[-1])
        lora_B_t = lora_B.weight.to(result.dtype).t()
        if not result.is_contiguous():  # nn.Linear's product of 2-D rows is a tensor of its own, contiguous
            result = torch.addmm(result, update_in.to(result.dtype), lora_B_t, alpha=self.scaling[name])
        else:  # in place; on a view it would cost autograd a copy of the gradient (CopySlices)
            result.addmm_(update_in.to(result.dtype), lora_B_t, alpha=self.scaling[name])
        return result.view(*x.shape[:-1], result.shape[-1])

    def dropped(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's dropout of ``x``: on a CPU drawn two elements to a random number (``cpu_dropout``)."""
        module = self.lora_dropout[name]
        if cpu_dropout.applies(module, x):
            return cpu_dropout.dropout(x, module.p, site=self.lora_A[name].weight)
        return module(x)

    def fusable_adapter(self, x: torch.Tensor, kwargs: dict) -> Optional[str]:
        """The one active vanilla LoRA adapter the fast path computes exactly as peft does, else ``None``."""
        if self.disable_adapters or self.merged or any(value is not None for value in kwargs.values()):
            return None  # adapter_names (mixed batches) and the variants' keyword arguments: peft's path
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        lora_B = self.lora_B[active[0]]
        if lora_B.bias is not None or hasattr(lora_B.weight, "ds_id"):  # ZeRO-3 gathers it in lora_B's forward
            return None
        same_dtype = self.get_base_layer().weight.dtype == lora_B.weight.dtype
        return active[0] if same_dtype or torch.is_autocast_enabled(x.device.type) else None


def holds_quantized_layers(model: torch.nn.Module) -> bool:
    """The model was loaded quantized (transformers' ``is_quantized``) or holds bitsandbytes layers."""
    return bool(getattr(model, "is_quantized", False)) or any(
        type(module).__module__.startswith("bitsandbytes") for module in model.modules())
