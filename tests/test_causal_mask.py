"""A right-padded causal LM batch trains without its padding mask (``lit_lora/models/causal_mask.py``), exactly.

* which masks count as right-padded (ones then zeros, 0/1 only, two dimensions);
* for Llama, Gemma, Phi and Falcon with SDPA and eager attention: the model is called with no mask, and the loss
  and every LoRA gradient equal the model's own with the mask (float32, 1e-5), on CPU and on a GPU;
* a left-padded batch, a prompt-learning adapter, FlashAttention and remote code keep the mask (a model that FSDP2's
  ``fully_shard`` gave its own class does not).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import FSDPModule

from lit_lora.adapters import LoRA, PromptTuning
from lit_lora.models import CausalLMModule
from lit_lora.models.causal_mask import keeps_padding_mask, right_padded
from lit_lora.token_loss import summed_loss

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rows", "expected"), [
    ([[1, 1, 1], [1, 1, 0], [1, 0, 0]], True),
    ([[1, 1, 1], [1, 1, 1]], True),  # no padding at all
    ([[1], [1]], True),
    ([[1, 1, 1], [0, 1, 1]], False),  # left padding
    ([[1, 0, 1]], False),  # a hole
    ([[2, 2, 1, 0]], False),  # not a 0/1 mask (a segment-id mask)
])
def test_right_padded_means_ones_then_zeros(rows, expected):
    assert right_padded(torch.tensor(rows)) is expected
    assert right_padded(torch.tensor(rows) != 0) is (expected or rows == [[2, 2, 1, 0]])  # bool masks too
    assert not right_padded(torch.tensor(rows)[None, None])  # a 4-D mask is the user's own


def build(model_dir: str, attention: str, device: str, adapter=None) -> CausalLMModule:
    torch.manual_seed(0)
    module = CausalLMModule(model_dir, adapter=adapter or LoRA(r=4, alpha=8, dropout=0.0),
                            attn_implementation=attention)
    module.configure_model()
    return module.to(device)


def padded_batch(module: CausalLMModule, left: bool = False) -> dict:
    vocab = module.model.get_input_embeddings().weight.shape[0]
    lengths = [15, 9, 4]
    ids = torch.randint(3, vocab, (3, 15), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(15)[None] < torch.tensor(lengths)[:, None]).long()
    if left:
        mask = mask.flip(-1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :1 + 2 * left] = -100  # a prompt
    return {key: value.to(module.device) for key, value in
            {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


def masks_seen(module: CausalLMModule) -> list:
    """The ``attention_mask`` each call of the transformers model receives (a forward pre-hook)."""
    seen: list = []
    module.model.get_base_model().register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    return seen


def loss_and_grads(module: CausalLMModule, inputs: dict, direct: bool = False):
    """Through the module (``loss_terms``: label-only head, padding mask dropped), or the model called with the
    batch as it is: the reference."""
    module.zero_grad(set_to_none=True)
    if direct:
        logits = module.model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
        summed = summed_loss(logits, inputs["labels"], shift=True)
    else:
        summed, _ = module.loss_terms(inputs)
    summed.backward()
    return summed.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gemma", "phi", "falcon"])
def test_a_right_padded_batch_trains_the_same_without_its_mask(arch, attention, device, tiny_model):
    module = build(tiny_model(arch), attention, device)
    seen = masks_seen(module)
    inputs = padded_batch(module)
    got_loss, got_grads = loss_and_grads(module, inputs)
    assert seen == [None]  # the model ran on the causal mask alone
    want_loss, want_grads = loss_and_grads(module, inputs, direct=True)
    assert seen[1] is inputs["attention_mask"]  # the reference kept it
    tolerance = TOLERANCE if device == "cpu" else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_loss, want_loss, **tolerance)
    assert got_grads.keys() == want_grads.keys() and any("lora_B" in name for name in got_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **tolerance, msg=name)


def test_a_left_padded_batch_keeps_its_mask(tiny_model):
    module = build(tiny_model("llama"), "sdpa", "cpu")
    seen = masks_seen(module)
    inputs = padded_batch(module, left=True)
    module.loss_terms(inputs)
    assert seen[0] is inputs["attention_mask"]


def test_prompt_learning_flash_attention_and_remote_code_keep_the_mask(tiny_model):
    module = build(tiny_model("llama"), "sdpa", "cpu", adapter=PromptTuning(num_virtual_tokens=4))
    assert "PromptTuningConfig" in keeps_padding_mask(module.model)
    seen = masks_seen(module)
    module.loss_terms(padded_batch(module))
    assert seen[0] is not None
    for attention in ("flash_attention_2", "flash_attention_3"):
        flash = module.model.get_base_model()
        flash.config._attn_implementation = attention
        assert attention in keeps_padding_mask(flash)
    remote = type("RemoteCodeLM", (torch.nn.Module,), {"__module__": "transformers_modules.org.model"})()
    assert "remote code" in keeps_padding_mask(remote)
    sharded = build(tiny_model("llama"), "sdpa", "cpu").model.get_base_model()
    sharded.__class__ = type(f"FSDP{type(sharded).__name__}", (FSDPModule, type(sharded)),  # as fully_shard does
                             {"__module__": "torch.distributed.fsdp._fully_shard._fsdp_init"})
    assert keeps_padding_mask(sharded) is None
    assert keeps_padding_mask(build(tiny_model("llama"), "sdpa", "cpu").model) is None
