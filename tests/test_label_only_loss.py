"""The label-only chunked LM head (``lit_lora.models.label_only_loss``) gives today's full-logits loss.

* the chunked linear cross-entropy: value and gradients (hidden rows, head weight, bias, with and
  without Gemma 2's softcap) equal ``nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")`` on full
  logits, for rows without labels, -100 in the middle and chunk sizes that do not divide the rows;
* through ``CausalLMModule.loss_terms`` for the tiny Llama, Gemma, Phi and Falcon twins: full fine-tuning
  (tied embeddings, Phi's head bias), LoRA, QLoRA, prompt / p- / prefix tuning, packed batches: the same
  summed loss and the same gradient of every trainable parameter as the full-logits path;
* the head never sees an unlabelled position; the paths that cannot take it keep the full logits.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from harness import demo_cli
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config

from lit_lora.adapters import FullFineTuning, LoRA, PrefixTuning, PromptTuning, PTuning, QLoRA
from lit_lora.models import CausalLMModule
from lit_lora.models import label_only_loss as label_only
from lit_lora.models.label_only_loss import (find_label_only_head, head_input, linear_cross_entropy_sum,
                                             summed_label_only_loss)
from lit_lora.token_loss import label_count, summed_loss

CAUSAL = ("llama", "gemma", "phi", "falcon")
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def reference_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")
    return loss(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def awkward_labels(rows: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Labels with a prompt, -100 in the middle of an answer, padding, and a row with no label at all."""
    labels = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    labels[:, :3] = -100
    labels[0, 6:8] = -100
    labels[1, length - 2:] = -100
    labels[2] = -100
    return labels


# ---- the chunked linear cross-entropy ---------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_value_and_gradients_equal_full_logits(chunk, softcap):
    torch.manual_seed(0)
    hidden = torch.randn(4, 11, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    labels = awkward_labels(4, 11, 40)
    head = label_only.LabelOnlyHead(SimpleNamespace(weight=weight, bias=bias), softcap)  # the leaves themselves
    loss = summed_label_only_loss(hidden, labels, head, chunk)
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    expected = reference_sum(logits, labels)
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    got = torch.autograd.grad(loss * 0.3, (hidden, weight, bias))
    want = torch.autograd.grad(expected * 0.3, (hidden, weight, bias))
    for name, a, b in zip(("hidden", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b, **TOLERANCE, msg=name)
    assert got[0][2].abs().max() == 0  # the row without labels gets no gradient


def test_a_float64_model_gets_a_float64_loss_and_gradients():
    """The loss is computed in float32 at least: a float64 run (a reference, a gradient check) keeps float64."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    labels = awkward_labels(3, 9, 40)
    head = label_only.LabelOnlyHead(SimpleNamespace(weight=weight, bias=None), None)
    loss = summed_label_only_loss(hidden, labels, head, 5)
    logits = F.linear(hidden, weight)
    expected = reference_sum(logits, labels)
    assert loss.dtype == torch.float64 and summed_loss(logits, labels, shift=True).dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(summed_loss(logits, labels, shift=True), expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(expected, (hidden, weight))):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_no_labels_at_all_and_no_grad():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    none = torch.full((2, 5), -100)
    loss = linear_cross_entropy_sum(hidden, weight, None, none, chunk_size=3)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0
    targets = torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        loss = linear_cross_entropy_sum(hidden, weight, None, targets, chunk_size=3)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy((hidden @ weight.T).reshape(-1, 30), targets.reshape(-1),
                                                     reduction="sum"), **TOLERANCE)


def test_nothing_of_size_rows_times_vocab_is_kept_for_backward():
    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(500, 8)  # frozen, as under LoRA
    saved: list = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        linear_cross_entropy_sum(hidden, weight, None, torch.randint(0, 500, (64,)), chunk_size=16)
    assert saved and all(s.numel() <= 64 * 8 for s in map(torch.Size, saved)), saved


# ---- through the module -----------------------------------------------------------------------------------
def build(path: str, adapter) -> CausalLMModule:
    torch.manual_seed(0)
    module = CausalLMModule(path, adapter=adapter, dtype="float32")
    module.configure_model()
    return module


def module_batch(module: CausalLMModule, packed: bool = False) -> dict:
    vocab = module.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    labels = awkward_labels(3, 12, vocab, seed=2)
    labels[labels != -100] = ids[labels != -100]
    if packed:  # two rows per sequence, positions restart, a row's first token predicts nothing
        labels[:, 5] = -100
        return {"input_ids": ids, "labels": labels, "position_ids": torch.cat([torch.arange(5), torch.arange(7)])
                .expand(3, 12).clone()}
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(module: CausalLMModule, batch: dict, label_only_path: bool):
    module.label_only_loss = label_only_path
    assert (module.loss_path()[0] is not None) == label_only_path, module.loss_path()
    module.zero_grad(set_to_none=True)
    summed, count = module.loss_terms(batch)
    (summed * 0.7).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return summed.detach(), count, grads


def assert_same_loss_and_grads(module: CausalLMModule, batch: dict) -> None:
    fast, fast_count, fast_grads = loss_and_grads(module, batch, True)
    full, full_count, full_grads = loss_and_grads(module, batch, False)
    assert int(fast_count) == int(full_count) == int(label_count(batch["labels"], shift=True)) > 0
    torch.testing.assert_close(fast, full, **TOLERANCE)
    assert fast_grads.keys() == full_grads.keys() and fast_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, **TOLERANCE, msg=name)


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("adapter", [FullFineTuning(), LoRA(r=4, alpha=8, dropout=0.0)], ids=["full", "lora"])
def test_module_loss_and_gradients_equal_full_logits(tiny_model, arch, adapter):
    module = build(tiny_model(arch), adapter)
    assert_same_loss_and_grads(module, module_batch(module))
    if adapter.method == "full" and arch in ("gemma", "falcon"):  # tied: the head is the embedding matrix
        head = module.model.get_output_embeddings()
        assert head.weight is module.model.get_input_embeddings().weight


@pytest.mark.parametrize("arch", CAUSAL)
def test_packed_batches_equal_full_logits(tiny_model, arch):
    module = build(tiny_model(arch), LoRA(r=4, alpha=8, dropout=0.0))
    assert_same_loss_and_grads(module, module_batch(module, packed=True))


@pytest.mark.parametrize("adapter", [
    QLoRA(r=4, alpha=8, dropout=0.0, compute_dtype="float32"),  # with gradient checkpointing (its default)
    PromptTuning(num_virtual_tokens=3),
    PTuning(num_virtual_tokens=3, encoder_hidden_size=16),
    PrefixTuning(num_virtual_tokens=3),
], ids=["qlora", "prompt-tuning", "p-tuning", "prefix-tuning"])
def test_peft_methods_equal_full_logits(tiny_model, adapter):
    module = build(tiny_model("llama"), adapter)
    assert_same_loss_and_grads(module, module_batch(module))


def test_evaluation_loss_equals_full_logits(tiny_model):
    module = build(tiny_model("llama"), LoRA(r=4, alpha=8, dropout=0.0))
    batch = module_batch(module)
    with torch.no_grad():
        fast = module.loss_terms(batch)[0]
        module.label_only_loss = False
        full = module.loss_terms(batch)[0]
    torch.testing.assert_close(fast, full, **TOLERANCE)


def test_the_head_sees_labelled_positions_only(tiny_model, monkeypatch):
    module = build(tiny_model("llama"), LoRA(r=4, alpha=8, dropout=0.0))
    module.label_only_chunk = 5
    batch = module_batch(module)
    head_outputs, chunk_rows = [], []
    module.model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_outputs.append(out.shape))
    chunk_logits = label_only._chunk_logits

    def counted(rows, *args):
        chunk_rows.append(rows.shape[0])
        return chunk_logits(rows, *args)

    monkeypatch.setattr(label_only, "_chunk_logits", counted)
    summed, count = module.loss_terms(batch, use_cache=False)
    assert [shape[-2] for shape in head_outputs] == [0]  # the model's own head call got no position
    assert sum(chunk_rows) == int(count) and max(chunk_rows) <= 5 and len(chunk_rows) > 1


def test_gemma2_softcapping_is_applied():
    config = Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                          initializer_range=0.5, attn_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    head, _ = find_label_only_head(model)
    assert head is not None and head.softcap == 0.5
    ids = torch.randint(0, 97, (3, 10))
    labels = awkward_labels(3, 10, 97)
    with head_input(head.linear) as caught:
        model(input_ids=ids)
    fast = summed_label_only_loss(caught.hidden, labels, head, chunk_size=4)
    full = summed_loss(model(input_ids=ids).logits, labels, shift=True)
    torch.testing.assert_close(fast, full, **TOLERANCE)
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, **TOLERANCE)


# ---- where the full logits stay ---------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [LoRA(r=4, target_modules=["q_proj", "lm_head"]),
                                  LoRA(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])],
                         ids=["lora-on-head", "head-trained-in-full"])
def test_an_adapter_on_the_head_keeps_full_logits(tiny_model, lora):
    module = build(tiny_model("llama"), lora)
    head, why = module.loss_path()
    assert head is None and "not a plain torch.nn.Linear" in why
    summed, count = module.loss_terms(module_batch(module), use_cache=False)
    assert torch.isfinite(summed) and int(count) > 0


def test_unknown_architectures_and_sharded_heads_keep_full_logits():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert find_label_only_head(gpt2)[0] is None
    llama_like = AutoModelForCausalLM.from_config(
        Gemma2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    assert find_label_only_head(llama_like)[0] is not None
    llama_like.lm_head.weight.ds_id = 0  # DeepSpeed ZeRO-3 marks a partitioned parameter
    head, why = find_label_only_head(llama_like)
    assert head is None and "sharded" in why


def test_seq2seq_and_classifier_modules_keep_full_logits():
    from lit_lora.models import Seq2SeqModule, SequenceClassifierModule

    for cls in (Seq2SeqModule, SequenceClassifierModule):
        head, why = cls("some/model").loss_path()
        assert head is None and cls.__name__ in why


def test_the_path_is_logged_once_at_debug_level(tiny_model, caplog):
    module = build(tiny_model("phi"), LoRA(r=4, alpha=8, dropout=0.0))
    batch = module_batch(module)
    with caplog.at_level(logging.DEBUG, logger="lit_lora.models.base"):
        module.loss_terms(batch, use_cache=False)
        module.loss_terms(batch, use_cache=False)
    records = [r for r in caplog.records if "loss:" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    assert "label-only" in records[0].getMessage()


def test_the_label_only_head_is_a_config_option(tiny_model, tmp_path):

    on = demo_cli(tiny_model("llama"), tmp_path / "on").model
    assert on.label_only_loss and on.label_only_chunk is None
    off = demo_cli(tiny_model("llama"), tmp_path / "off", "--model.init_args.label_only_loss", "false",
                   "--model.init_args.label_only_chunk", "7").model
    assert off.label_only_loss is False and off.label_only_chunk == 7
    assert off.loss_path() == (None, "label_only_loss: false")
    with pytest.raises(ValueError, match="label_only_chunk must be a positive number"):
        demo_cli(tiny_model("llama"), tmp_path / "bad", "--model.init_args.label_only_chunk", "0")
