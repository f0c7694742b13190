"""``model.init_args.compile: true`` (``lit_lora/models/compiled_layers.py``) trains the numbers eager layers train.

* the transformer layers, and only they, are compiled in place: same parameter names, so the same checkpoints;
* the loss (through the label-only head, whose hook sits outside the compiled layers) and every LoRA gradient
  equal the eager module's, at two batch lengths (``dynamic=True``: the second length needs no recompile);
* with LoRA dropout, compiled layers draw the eager masks (``cpu_dropout``), gradient checkpointing's recompute too;
* evaluation generation, which runs the layers eagerly, answers as the eager module does;
* a strategy that wraps or partitions the layers after ``configure_model`` is refused by name.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from lit_lora.adapters import LoRA, QLoRA, cpu_dropout
from lit_lora.errors import IncompatibleConfig
from lit_lora.evaluation.generation import GenerationSettings, generate_batch
from lit_lora.models import CausalLMModule
from lit_lora.models.builder import is_checkpointing
from lit_lora.models.compiled_layers import compile_layers, compiled_layers

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


ADAPTERS = {"lora": lambda: LoRA(r=4, alpha=8, dropout=0.0),
            "qlora": lambda: QLoRA(r=4, alpha=8, dropout=0.0)}  # 4-bit base, gradient checkpointing (its default)


def build(model_dir: str, compile: bool, device: str, adapter: str = "lora", **module_args) -> CausalLMModule:
    torch.manual_seed(0)  # LoRA's A matrices: the same initial adapter in both modules
    module = CausalLMModule(model_dir, adapter=ADAPTERS[adapter](), compile=compile, **module_args)
    module.configure_model()
    return module.to(device)


def batch(module: CausalLMModule, length: int) -> dict:
    vocab = module.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (3, length), generator=torch.Generator().manual_seed(length))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    mask = torch.ones_like(ids)
    mask[1, length - 3:] = 0  # a shorter row, right-padded
    labels[mask == 0] = -100
    return {key: value.to(module.device) for key, value in
            {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


def loss_and_grads(module: CausalLMModule, inputs: dict):
    module.zero_grad(set_to_none=True)
    summed, _ = module.loss_terms(inputs)
    summed.backward()
    return summed.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model, device, adapter):
    """float32 compute; on a GPU inductor's generated kernels sum in other orders than cuBLAS, so 1e-4 there.
    QLoRA recomputes each compiled layer inside gradient checkpointing in the backward."""
    model_dir = tiny_model("llama")
    eager, compiled = build(model_dir, False, device, adapter), build(model_dir, True, device, adapter)
    tolerance = TOLERANCE if device == "cpu" else dict(rtol=1e-4, atol=1e-4)
    layers = compiled_layers(compiled.model)
    assert {type(layer).__name__ for layer in layers} == {"LlamaDecoderLayer"}
    assert len(layers) == compiled.model.config.num_hidden_layers and not compiled_layers(eager.model)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints and adapters keep their names
    assert compiled.loss_path()[0] is not None  # the label-only head's hook, outside the compiled layers
    assert is_checkpointing(compiled.model) == (adapter == "qlora")
    for length in (12, 17):
        want_loss, want_grads = loss_and_grads(eager, batch(eager, length))
        got_loss, got_grads = loss_and_grads(compiled, batch(compiled, length))
        torch.testing.assert_close(got_loss, want_loss, **tolerance)
        assert got_grads.keys() == want_grads.keys() and any("lora_A" in name for name in got_grads)
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, **tolerance, msg=name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [tokenizer("def add(a, b):")["input_ids"], tokenizer("Sort a list")["input_ids"]]
    settings = GenerationSettings(max_new_tokens=6)
    answers = [generate_batch(module.model, tokenizer, prompts, settings, encoder_decoder=False)
               for module in (eager, compiled)]
    assert answers[0] == answers[1]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_draw_the_eager_lora_dropout_masks(tiny_model, monkeypatch, checkpointing):
    """LoRA dropout 0.3 on every projection, drawn by ``cpu_dropout`` in both (its size floor off: the tiny model's
    tensors are small). Under one seed the compiled step drops what the eager one drops, in each of q, k and v
    (one input, three masks) and again in gradient checkpointing's recompute: loss and gradients agree."""
    monkeypatch.setattr(cpu_dropout, "MIN_ELEMENTS", 0)
    monkeypatch.setitem(ADAPTERS, "lora", lambda: LoRA(r=4, alpha=8, dropout=0.3))
    model_dir = tiny_model("llama")
    eager = build(model_dir, False, "cpu")
    compiled = build(model_dir, True, "cpu", gradient_checkpointing=checkpointing)
    assert is_checkpointing(compiled.model) == checkpointing
    for module in (eager, compiled):
        module.train()
    results = []
    for module in (eager, compiled):
        torch.manual_seed(1)
        results.append(loss_and_grads(module, batch(module, 17)))
    (want_loss, want_grads), (got_loss, got_grads) = results
    torch.testing.assert_close(got_loss, want_loss, **TOLERANCE)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **TOLERANCE, msg=name)
    torch.manual_seed(2)  # another seed, other masks: B's gradient (B starts at zero, so the loss does not move)
    other_grads = loss_and_grads(eager, batch(eager, 17))[1]
    assert any(not torch.equal(other_grads[name], grad) for name, grad in want_grads.items() if "lora_B" in name)


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"])
def test_a_strategy_that_wraps_the_layers_is_refused_by_name(strategy):
    with pytest.raises(IncompatibleConfig, match=f"compile: true .* not under {strategy}"):
        compile_layers(torch.nn.Linear(2, 2), strategy)


def test_the_refusal_comes_before_the_weights_load():
    """A hub id nobody published: the refusal is what stops ``configure_model``, not the model's absence."""
    module = CausalLMModule("lit-lora-tests/never-published", compile=True)
    module._trainer = SimpleNamespace(strategy=type("DeepSpeedStrategy", (), {})())  # what Lightning attaches
    with pytest.raises(IncompatibleConfig, match="not under DeepSpeedStrategy"):
        module.configure_model()
