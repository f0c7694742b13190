"""Packed SFT batches (``data.packing``): best-fit decreasing, no attention across rows, resumable, same gradient.

* the plan: every row once per epoch across ranks, sequences within ``max_length``, batches within the token
  budget, a function of (seed, epoch) only, resumed mid-epoch after the last trained batch;
* no contamination: for Llama, Gemma, Phi and Falcon (sdpa and eager; FlashAttention 2 on a GPU) every row's
  logits and summed loss inside a packed batch equal the row run alone;
* through ``lit-lora fit``: a packed run trains, an interrupted one resumes step for step, and one optimizer
  step's gradient is the same packed and unpacked (the loss is token-normalised).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flash_reference import flash_kernel_on_cpu
from harness import (KillBeforeStep, Killed, adapter_tensors, fake_trainer, fit, read_losses, resumable_demo_cli,
                     write_code_rows)
from lightning.pytorch import Callback

from lit_lora.ckpt_settings import CheckpointSettingsMismatch
from lit_lora.data import InstructionDataModule
from lit_lora.data.collators import IGNORE_INDEX, PackCollator
from lit_lora.data.packing import PackedRows, PackedSampler, best_fit_decreasing
from lit_lora.data.resumable import ResumableDataLoader
from lit_lora.models.packing_support import flattens, model_packing_refusal
from lit_lora.token_loss import label_count, summed_loss

CAUSAL = ("llama", "gemma", "phi", "falcon")


# ---- the plan --------------------------------------------------------------------------------------------
def reference_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing written the slow, obvious way."""
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [b for b in range(len(bins)) if sum(lengths[j] for j in bins[b]) + lengths[i] <= capacity]
        if fits:
            bins[max(fits, key=lambda b: (sum(lengths[j] for j in bins[b]), -b))].append(i)
        else:
            bins.append([i])
    return bins


def random_lengths(n: int, seed: int = 0, longest: int = 256) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, longest) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_fit_decreasing_matches_the_obvious_algorithm(seed):
    lengths = random_lengths(300, seed)
    bins = best_fit_decreasing(lengths, 256)
    assert bins == reference_bfd(lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert len(bins) <= 1.25 * sum(lengths) / 256 + 1  # near the lower bound, far from one row per sequence
    with pytest.raises(ValueError, match="more than a packed sequence holds"):
        best_fit_decreasing([10, 300], 256)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_once_per_epoch_across_ranks_within_the_budget(world):
    n, max_length, per_batch = 501, 256, 3
    lengths = random_lengths(n, seed=4)
    samplers = [PackedSampler(range(n), lengths, max_length, per_batch, num_replicas=world, rank=r, seed=7)
                for r in range(world)]
    shards = [list(s) for s in samplers]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == len(samplers[0])  # ranks step together
    batches = [b for shard in shards for b in shard]
    assert all(1 <= len(b) <= per_batch for b in batches)
    assert all(sum(lengths[i] for i in seq) <= max_length for b in batches for seq in b)
    drawn = [i for b in batches for seq in b for i in seq]
    assert sorted(set(drawn)) == list(range(n))
    sequences = [seq for b in batches for seq in b]
    repeated = len(sequences) - len({tuple(seq) for seq in sequences})
    assert repeated == -samplers[0].num_sequences % world  # as DistributedSampler pads: under one sequence a rank
    assert sorted(i for seq in samplers[0].sequences(0) for i in seq) == list(range(n))  # each row exactly once


@pytest.mark.parametrize("world", [2, 8])
def test_ranks_share_the_last_steps_sequences_instead_of_repeating_batches(world):
    """18 sequences of 8 a batch on 8 ranks: 3 global steps, none repeated whole; 6 sequences of padding, not 6
    batches of 8 (a third of the epoch trained twice)."""
    lengths = [200] * 18  # one row a sequence at max_length 256
    samplers = [PackedSampler(range(18), lengths, 256, 8, num_replicas=world, rank=r, seed=1) for r in range(world)]
    shards = [list(s) for s in samplers]
    steps = len(shards[0])
    assert all(len(shard) == steps for shard in shards) and steps == math.ceil(math.ceil(18 / world) * world / (8 * world))
    rows = [i for shard in shards for b in shard for seq in b for i in seq]
    assert sorted(set(rows)) == list(range(18)) and len(rows) - 18 == -18 % world
    for step in range(steps):  # every rank trains the same number of sequences at each step
        assert len({len(shard[step]) for shard in shards}) == 1


def test_plan_depends_on_seed_and_epoch_only():
    lengths = random_lengths(400, seed=5, longest=60)  # many ties: the permutation decides among them
    a, b = (PackedSampler(range(400), lengths, 128, 2, seed=5) for _ in range(2))
    random.seed(1)
    torch.manual_seed(1)
    first = list(a)
    random.seed(2)
    torch.manual_seed(2)
    assert list(b) == first
    a.set_epoch(1)
    second = list(a)
    assert second != first and len(second) == len(first)
    assert sorted(i for x in second for s in x for i in s) == sorted(i for x in first for s in x for i in s)
    assert list(PackedSampler(range(400), lengths, 128, 2, seed=6)) != first



@pytest.mark.parametrize("rank", [0, 1])
def test_mid_epoch_resume_rebuilds_the_plan_and_skips_the_trained_batches(rank):
    n, world = 300, 2
    lengths = random_lengths(n, seed=2, longest=100)
    rows = [{"input_ids": [i] * n_tokens, "labels": [i] * n_tokens} for i, n_tokens in enumerate(lengths)]

    def loader():
        sampler = PackedSampler(rows, lengths, 128, 2, num_replicas=world, rank=rank, seed=11)
        return ResumableDataLoader(PackedRows(rows), batch_size=None, sampler=sampler,
                                   collate_fn=PackCollator(pad_token_id=0))

    def keys(batches):
        return [b["input_ids"].tolist() for b in batches]

    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(2)
    expected = keys(uninterrupted)
    assert len(expected) == len(uninterrupted) > 6

    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    interrupted.trainer = fake_trainer(batches_done=5)
    state = interrupted.state_dict()
    assert state["order"].startswith("packed") and (state["epoch"], state["batches"]) == (2, 5)

    resumed = loader()  # a fresh process: epoch 0 until the state is loaded
    resumed.load_state_dict(state)
    assert keys(resumed) == expected[5:]
    assert keys(resumed) == expected  # the following iteration is the whole epoch again


def test_resume_from_an_epochs_end_starts_the_next_epoch_whole():
    """Lightning makes the train iterator before it sets the next epoch when the checkpoint closed an epoch:
    the position must be read when the first batch is drawn, and the step windows start with the epoch."""
    lengths = random_lengths(200, seed=3, longest=100)
    rows = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths)]

    def loader(trainer):
        made = ResumableDataLoader(PackedRows(rows), batch_size=None, collate_fn=PackCollator(pad_token_id=0),
                                   sampler=PackedSampler(rows, lengths, 128, 2, seed=1))
        made.trainer = trainer
        return made

    whole = loader(None)
    whole.sampler.set_epoch(1)
    expected = [b["input_ids"].tolist() for b in whole]
    limit, accumulate = len(expected) - 1, 3  # limit_train_batches one short of the epoch
    trainer = fake_trainer(len(expected), accumulate, limit)
    state = loader(trainer).state_dict()  # written after the last batch of epoch 0
    resumed = loader(trainer)
    resumed.load_state_dict(state)
    batches = iter(resumed)  # as Lightning's setup_data does, still in epoch 0
    resumed.sampler.set_epoch(1)
    got = [b for _, b in zip(range(limit), batches)]  # Lightning stops pulling at the limit
    assert [b["input_ids"].tolist() for b in got] == expected[:limit]
    windows = [len(b["step_labels"]) for b in got]
    assert windows == [min(accumulate, limit - i // accumulate * accumulate) for i in range(limit)]


def test_resume_refuses_another_packing_or_an_unpacked_order():
    lengths = random_lengths(40, longest=60)
    packed = ResumableDataLoader(PackedRows(list(range(40))), batch_size=None,
                                 sampler=PackedSampler(range(40), lengths, 128, 2))
    packed.trainer = fake_trainer(3)
    for other in (ResumableDataLoader(list(range(40)), batch_size=4, lengths=lengths),
                  ResumableDataLoader(PackedRows(list(range(40))), batch_size=None,
                                      sampler=PackedSampler(range(40), lengths, 128, 3))):
        with pytest.raises(CheckpointSettingsMismatch, match="data.packing"):
            other.load_state_dict(packed.state_dict())


# ---- the batch -------------------------------------------------------------------------------------------
def test_collator_restarts_positions_and_masks_each_rows_first_label():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt": "p"},
            {"input_ids": [8, 9], "labels": [8, 9], "prompt": "q"},
            {"input_ids": [3, 4], "labels": [3, 4], "prompt": "r"}]
    stacked = PackCollator(pad_token_id=0)([[rows[0], rows[1]], [rows[2]]])
    assert set(stacked) == {"input_ids", "labels", "position_ids"}  # no attention_mask: the positions separate rows
    assert stacked["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert stacked["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]  # padding is a block of its own
    assert stacked["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]]
    flat = PackCollator(pad_token_id=0, flatten=True)([[rows[0], rows[1]], [rows[2]]])
    assert flat["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert flat["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 4]]
    assert flattens("flash_attention_2") and flattens("kernels-community/flash-attn3")
    assert not flattens("sdpa") and not flattens("eager") and not flattens(None)
    assert flattens("torch_varlen") and not flattens("torch_varlen", torch.device("cpu"))  # its kernel: CUDA only


def test_sft_data_groups_by_length_by_default_and_classification_data_does_not(tiny_model):
    from lit_lora.data import MultiNLIDataModule

    assert InstructionDataModule(tokenizer_name_or_path=tiny_model("llama")).group_by_length
    assert not InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), group_by_length=False).group_by_length
    assert not MultiNLIDataModule(tokenizer_name_or_path=tiny_model("roberta")).group_by_length


def test_packed_datamodule_batches_every_label_once_within_the_budget(tiny_model, caplog):
    kwargs = dict(tokenizer_name_or_path=tiny_model("llama"), max_samples=60, max_length=512, batch_size=4)
    dm = InstructionDataModule(packing=True, **kwargs)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        dm.setup("fit")
    assert dm.max_tokens_per_batch == 512 * 4
    train = dm.datasets["train"]
    line = next(r.getMessage() for r in caplog.records if "packing:" in r.getMessage())
    assert f"{len(train)} train rows -> " in line and "fill" in line and "% (non-pad tokens / slots)" in line

    batches = list(dm.train_dataloader())
    assert all("attention_mask" not in b and b["input_ids"].numel() <= dm.max_tokens_per_batch for b in batches)
    assert all(b["input_ids"].shape[1] <= 512 for b in batches)
    rows = sum(int((b["position_ids"][:, 1:] < b["position_ids"][:, :-1]).sum()) + len(b["position_ids"])
               for b in batches)  # row starts: each sequence's first token and every restart
    padding_blocks = sum(int(((b["input_ids"] == dm.tokenizer.pad_token_id) & (b["position_ids"] == 0)).sum())
                         for b in batches)
    assert rows - padding_blocks == len(train)
    # every label token of every row is in the loss once, none across a row boundary
    assert sum(int(label_count(b["labels"], shift=True)) for b in batches) == \
        sum(int(label_count(torch.tensor([labels]), shift=True)) for labels in train["labels"])
    assert all(len(b["step_labels"]) == 1 and b["step_labels"][0] is b["labels"] for b in batches)

    unpacked = InstructionDataModule(**kwargs)
    unpacked.setup("fit")
    unpacked_batches = list(unpacked.train_dataloader())
    assert len(batches) < len(unpacked_batches) / 2  # fewer, fuller batches than length-grouped rows
    assert "attention_mask" in next(iter(dm.val_dataloader()))  # validation stays unpacked
    assert not dm.packed_collate_fn().flatten  # no model: stacked sequences
    from lit_lora.models import CausalLMModule

    for asked, flat in (("flash_attention_2", True), ("sdpa", False)):  # the module declares it
        dm.trainer = SimpleNamespace(lightning_module=CausalLMModule(tiny_model("llama"), attn_implementation=asked))
        assert dm.packed_collate_fn().flatten is flat
    module = CausalLMModule(tiny_model("llama"))  # built: what the model really runs decides
    module.configure_model()
    module.model.config._attn_implementation = "flash_attention_2"
    dm.trainer = SimpleNamespace(lightning_module=module)
    assert dm.packed_collate_fn().flatten


def test_packing_is_refused_where_rows_would_see_each_other(tiny_model):
    from transformers import GPT2Config, LlamaConfig

    from lit_lora.adapters import LoRA
    from lit_lora.compatibility import IncompatibleConfig
    from lit_lora.adapters.prompt import PrefixTuning, PromptTuning
    from lit_lora.data import MultiNLIDataModule

    with pytest.raises(IncompatibleConfig, match="packing: true needs a causal LM; MultiNLIDataModule holds classification "
                                         "rows.*set packing: false"):
        MultiNLIDataModule(tokenizer_name_or_path=tiny_model("roberta"), packing=True).setup("fit")
    from lit_lora.models import CausalLMModule, Seq2SeqModule

    dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("t5"), packing=True)
    dm.trainer = SimpleNamespace(lightning_module=Seq2SeqModule(tiny_model("t5")))  # the model declares what it is
    with pytest.raises(IncompatibleConfig, match="packing: true needs a causal LM; .*encoder-decoder.*set packing: false"):
        dm.setup("fit")
    with pytest.raises(IncompatibleConfig, match="packing: true needs a causal LM; .*encoder-decoder.*set packing: false"):
        InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), encoder_decoder=True,
                              packing=True).setup("fit")
    with pytest.raises(IncompatibleConfig, match="max_tokens_per_batch .100. must hold one packed sequence"):
        InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), packing=True, max_length=256,
                              max_tokens_per_batch=100).setup("fit")
    dm = InstructionDataModule(tokenizer_name_or_path=tiny_model("llama"), packing=True)
    # the module the CLI pairs it with answers from its own model config and adapter
    dm.trainer = SimpleNamespace(lightning_module=CausalLMModule(tiny_model("llama"), adapter=PromptTuning()))
    with pytest.raises(IncompatibleConfig, match="does not work with prompt_tuning.*set packing: false"):
        dm.setup("fit")
    assert "not gpt2" in model_packing_refusal(GPT2Config())
    assert "prompt_tuning" in model_packing_refusal(LlamaConfig(), PromptTuning())
    assert "prefix_tuning" in model_packing_refusal(LlamaConfig(), PrefixTuning())
    assert model_packing_refusal(LlamaConfig(), LoRA()) is None
    from transformers import FalconConfig

    assert model_packing_refusal(FalconConfig(alibi=False), LoRA()) is None
    assert "ALiBi" in model_packing_refusal(FalconConfig(alibi=True), LoRA())


# ---- no contamination ------------------------------------------------------------------------------------
ROW_LENGTHS = (37, 12, 50, 23, 8, 61, 30, 19)
CAPACITY = 64


def packed_rows(seed: int = 0) -> tuple[list[dict], list[list[int]]]:
    """Rows of random tokens (some with a prompt masked out of the labels) and their best-fit plan."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate(ROW_LENGTHS):
        ids = torch.randint(3, 500, (n,), generator=generator).tolist()
        prompt = n // 3 if i % 2 else 0
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    plan = best_fit_decreasing([len(r["input_ids"]) for r in rows], CAPACITY)
    assert len(plan) < len(rows) and any(len(sequence) > 2 for sequence in plan)  # rows do share sequences
    return rows, plan


def row_spans(plan: list[list[int]], flatten: bool) -> dict[int, tuple[int, int]]:
    """row -> (batch row, first position) in the collated batch."""
    spans, offset = {}, 0
    for s, sequence in enumerate(plan):
        offset = offset if flatten else 0
        for i in sequence:
            spans[i] = (0 if flatten else s, offset)
            offset += ROW_LENGTHS[i]
    return spans


def flattened_boundaries(plan: list[list[int]]) -> list[int]:
    """``cu_seqlens`` of the flattened batch of ``plan``: where each row starts, then the total."""
    ends = [0]
    for i in (i for sequence in plan for i in sequence):
        ends.append(ends[-1] + ROW_LENGTHS[i])
    return ends


def summed_loss64(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``summed_loss`` (causal shift) in float64."""
    logits, labels = logits[:, :-1].double(), labels[:, 1:].to(logits.device)  # position t predicts t + 1
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def worst_row_error(model, rows, plan, flatten: bool, device: str = "cpu", with_positions: bool = True):
    """Largest |logit| difference and |summed loss| difference between a row packed and the row alone."""
    batch = PackCollator(pad_token_id=0, flatten=flatten)([[rows[i] for i in sequence] for sequence in plan])
    inputs = {"input_ids": batch["input_ids"].to(device)}
    if with_positions:
        inputs["position_ids"] = batch["position_ids"].to(device)
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits.float()  # (sequences, longest, vocab)
        logit_error = loss_error = 0.0
        total = 0.0
        for i, (b, start) in row_spans(plan, flatten).items():
            ids, labels = torch.tensor([rows[i]["input_ids"]]), torch.tensor([rows[i]["labels"]])
            alone = model(input_ids=ids.to(device), use_cache=False).logits.float()  # (1, length, vocab)
            inside = packed[b:b + 1, start:start + ids.shape[1]]
            logit_error = max(logit_error, float((inside - alone).abs().max()))
            packed_labels = batch["labels"][b:b + 1, start:start + ids.shape[1]]
            # summed in float64: a float32 sum near 300 nats has a resolution of 3e-5, coarser than the tolerance
            row_loss, inside_loss = summed_loss64(alone, labels), summed_loss64(inside, packed_labels)
            loss_error = max(loss_error, abs(float(inside_loss - row_loss)))
            total += float(row_loss)
        # the whole batch: no token predicted across a row boundary, no label lost
        whole = float(summed_loss(packed, batch["labels"].to(device), shift=True))
        assert int(label_count(batch["labels"], shift=True)) == \
            sum(int(label_count(torch.tensor([r["labels"]]), shift=True)) for r in rows)
    return logit_error, loss_error, abs(whole - total) / max(abs(total), 1.0)


def set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", CAUSAL)
def test_a_packed_row_equals_the_row_alone(arch, attn, device, tiny_model, request):
    """float32, so 1e-5 holds; on a GPU without flash-attn, sdpa's block mask is the packing a bf16 run gets too.
    TF32 (on in some CUDA images) would round float32 matmuls to about 1e-3: turned off for this comparison."""
    from transformers import AutoModelForCausalLM

    if device == "cuda":
        if os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1":
            pytest.skip("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 forces TF32 matmuls: float32 packing cannot be checked")
        # set and restored by hand: torch's flags are module properties, which monkeypatch cannot undo (torch 2.11)
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        request.addfinalizer(lambda: set_tf32(*saved))
        set_tf32(False, False)

    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), attn_implementation=attn,
                                                 dtype=torch.float32).to(device).eval()
    rows, plan = packed_rows()
    for flatten in (False, True):
        logits, loss, whole = worst_row_error(model, rows, plan, flatten, device=device)
        print(f"{arch} {attn} {device} {'flattened' if flatten else 'stacked'}: logits {logits:.1e}, "
              f"summed loss {loss:.1e}")
        assert logits < 1e-5 and loss < 1e-5 and whole < 1e-6, (arch, attn, flatten, logits, loss, whole)
    # the same batch without restarting positions is one causal sequence: later rows see earlier ones
    contaminated, _, _ = worst_row_error(model, rows, plan, flatten=False, device=device, with_positions=False)
    assert contaminated > 1e-2, contaminated


@pytest.mark.gpu
@pytest.mark.parametrize("arch,attn", [(arch, "flash_attention_2") for arch in CAUSAL]
                         + [(arch, "torch_varlen") for arch in CAUSAL if arch != "falcon"])  # Falcon: refused
def test_a_packed_row_equals_the_row_alone_with_flash_attention(arch, attn, tiny_model, monkeypatch):
    """FlashAttention varlen (from position_ids, one flattened row), float16 on a CUDA GPU: flash-attn's kernel
    (``flash_attention_2``) or PyTorch's (``torch_varlen``, which must really run it); half-precision noise, not
    fp32's 1e-5, so the bounds are looser, and far below what a row seeing another costs."""
    from transformers import AutoModelForCausalLM

    from lit_lora.models import varlen_attention

    calls: list = []
    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash_attention_2 needs the flash-attn package")
    else:
        if torch.cuda.get_device_capability() < (8, 0):
            pytest.skip("torch.nn.attention.varlen needs an A100 or newer GPU")
        varlen_attention.register()
        kernel = varlen_attention.varlen_kernel()

        @functools.wraps(kernel)  # the glue reads the kernel's signature: the spy keeps it
        def spy(*args, **kwargs):
            calls.append(args[3].tolist())
            return kernel(*args, **kwargs)

        monkeypatch.setattr(varlen_attention, "varlen_kernel", lambda: spy)
        monkeypatch.setattr(varlen_attention, "PACKED_FORWARDS", Counter())
    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), attn_implementation=attn,
                                                 dtype=torch.float16).to("cuda").eval()
    assert model.config._attn_implementation == attn
    rows, plan = packed_rows()
    assert flattens(model.config._attn_implementation)  # the layout the datamodule picks for it
    logits, loss, whole = worst_row_error(model, rows, plan, flatten=True, device="cuda")
    print(f"{arch} {attn} flattened: logits {logits:.1e}, summed loss {loss:.1e}")
    assert logits < 2e-2 and loss < 1e-1 and whole < 1e-3, (arch, logits, loss, whole)
    if attn == "torch_varlen":
        assert calls == [flattened_boundaries(plan)] * model.config.num_hidden_layers
        assert dict(varlen_attention.PACKED_FORWARDS) == {varlen_attention.KERNEL: len(calls)}  # no sdpa fallback
    contaminated, _, _ = worst_row_error(model, rows, plan, flatten=True, device="cuda", with_positions=False)
    assert contaminated > 0.5, contaminated


# ---- torch_varlen: PyTorch's FlashAttention varlen kernel -------------------------------------------------
def varlen_contract(calls: list, first_release: bool = False):
    """``torch.nn.attention.varlen.varlen_attn`` as its documentation states it, computed per row with sdpa on
    a CPU (the kernel is CUDA-only); each call's ``cu_seqlens`` go to ``calls``. ``first_release``: the first
    signature (PyTorch 2.10: ``is_causal``, no scale, as many key heads as query heads), else today's."""
    def per_row(q, k, v, cu, scale=None, enable_gqa=False):
        calls.append(cu.tolist())
        rows = []
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
            row = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # (heads, length, head_dim)
            rows.append(torch.nn.functional.scaled_dot_product_attention(
                *row, is_causal=True, scale=scale, enable_gqa=enable_gqa).transpose(0, 1))
        return torch.cat(rows)

    def check(q, k, cu_q, cu_k, max_q, max_k):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        assert max_q == max_k == int(cu_q.diff().max()) and q.shape[0] == k.shape[0] == int(cu_q[-1])

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1),
                    enable_gqa=False):
        check(q, k, cu_q, cu_k, max_q, max_k)
        assert window_size == (-1, 0)
        return per_row(q, k, v, cu_q, scale, enable_gqa)

    def first_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
        check(q, k, cu_q, cu_k, max_q, max_k)
        assert is_causal and k.shape[1] == q.shape[1]
        return per_row(q, k, v, cu_q)

    return first_varlen_attn if first_release else varlen_attn


def stand_in_kernel(monkeypatch, calls: list, first_release: bool = False) -> None:
    """This CPU as a GPU with the kernel, in float32 too, the kernel being its contract (``varlen_contract``)."""
    from lit_lora.models import varlen_attention

    monkeypatch.setattr(varlen_attention, "kernel_device", lambda device: True)
    monkeypatch.setattr(varlen_attention, "kernel_runs_on", lambda query: True)
    monkeypatch.setattr(varlen_attention, "varlen_kernel", lambda: varlen_contract(calls, first_release))


@pytest.fixture
def torch_kernel_on_cpu(monkeypatch):
    """This CPU as a GPU with PyTorch's own ``varlen_attn``: its wrapper, operator and autograd as shipped, over
    ``flash_reference``'s CPU FlashAttention, in float32 too; yields the list of each call's ``cu_seqlens``."""
    from lit_lora.models import varlen_attention

    monkeypatch.setattr(varlen_attention, "kernel_device", lambda device: True)
    monkeypatch.setattr(varlen_attention, "kernel_runs_on", lambda query: True)
    with flash_kernel_on_cpu([]) as calls:
        yield calls


@pytest.mark.parametrize("kernel", ["today", "first-release", "torch"])
@pytest.mark.parametrize("arch", ("llama", "gemma", "phi"))  # grouped-query, multi-query, multi-head attention
def test_torch_varlen_hands_the_kernel_each_packed_row_as_its_own_sequence(arch, kernel, tiny_model, monkeypatch,
                                                                            request):
    """What lit-lora gives the kernel (the flattened rows, ``cu_seqlens`` from the restarting positions, key
    heads, the scale) and takes back (the output layout), checked on a CPU against the kernel's documented
    contract in both of its signatures, and through the installed PyTorch's own ``varlen_attn`` over a reference
    FlashAttention (``torch``): every packed row equals the row alone, in fp32 to 1e-5. The CUDA kernel itself
    runs in the gpu test above."""
    from transformers import AutoModelForCausalLM

    from lit_lora.models import varlen_attention

    if kernel == "torch":
        calls = request.getfixturevalue("torch_kernel_on_cpu")
    else:
        calls = []
        stand_in_kernel(monkeypatch, calls, first_release=kernel == "first-release")
    varlen_attention.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), attn_implementation="torch_varlen",
                                                 dtype=torch.float32).eval()
    rows, plan = packed_rows()
    logits, loss, whole = worst_row_error(model, rows, plan, flatten=True)
    assert logits < 1e-5 and loss < 1e-5 and whole < 1e-6, (arch, logits, loss, whole)
    # the packed batch went through the kernel in every layer; the rows alone (positions from 0, no restart) not
    assert calls == [flattened_boundaries(plan)] * model.config.num_hidden_layers
    calls.clear()
    contaminated, _, _ = worst_row_error(model, rows, plan, flatten=True, with_positions=False)
    assert contaminated > 1e-2 and calls == []  # one causal sequence: sdpa, later rows see earlier ones


def test_a_scale_the_first_kernel_cannot_take_goes_to_sdpa(tiny_model, monkeypatch):
    """The first ``varlen_attn`` has no ``scale``: a model whose attention scale is not 1/sqrt(head_dim) runs
    sdpa there (with sdpa's block mask), so its packed rows still equal the rows alone."""
    from transformers import AutoModelForCausalLM

    from lit_lora.models import varlen_attention

    calls: list = []
    stand_in_kernel(monkeypatch, calls, first_release=True)
    varlen_attention.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), attn_implementation="torch_varlen",
                                                 dtype=torch.float32).eval()
    for layer in model.model.layers:
        layer.self_attn.scaling *= 2
    logits, loss, whole = worst_row_error(model, *packed_rows(), flatten=True)
    assert logits < 1e-5 and loss < 1e-5 and whole < 1e-6 and calls == [], (logits, loss, whole, calls)


def test_torch_varlen_is_sdpa_where_its_kernel_cannot_run(tiny_model):
    """On a CPU (and for float32, dropout, a sliding window) the registered attention is transformers' sdpa with
    sdpa's mask: packed, left-padded and generated outputs are sdpa's to the bit."""
    from transformers import AutoModelForCausalLM

    from lit_lora.models import varlen_attention

    varlen_attention.register()
    models = [AutoModelForCausalLM.from_pretrained(tiny_model("llama"), attn_implementation=attn,
                                                   dtype=torch.float32).eval() for attn in ("sdpa", "torch_varlen")]
    rows, plan = packed_rows()
    packed = PackCollator(pad_token_id=0, flatten=True)([[rows[i] for i in sequence] for sequence in plan])
    padded = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        sdpa, varlen = ([m(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits,
                         m(**padded).logits] for m in models)
        generated = [m.generate(**padded, max_new_tokens=4, do_sample=False, pad_token_id=0) for m in models]
    assert all(torch.equal(a, b) for a, b in zip(sdpa, varlen)) and torch.equal(*generated)


def test_torch_varlen_says_once_which_path_packed_rows_took(tiny_model, monkeypatch, caplog):
    """On a device with the kernel, packed rows that cannot reach it (here float32) are a warning naming the reason,
    once; packed rows that reach it an info line, once; ``PACKED_FORWARDS`` counts every attention call on packed
    rows by path (what the GPU bench reports), and no call on unpacked rows. On a CPU (no kernel: the datamodule
    stacks packed sequences there) a packed row is sdpa's, neither said nor counted."""
    from transformers import AutoModelForCausalLM

    from lit_lora.models import varlen_attention

    monkeypatch.setattr(varlen_attention, "PACKED_FORWARDS", Counter())
    varlen_attention.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), attn_implementation="torch_varlen",
                                                 dtype=torch.float32).eval()
    rows, plan = packed_rows()
    packed = PackCollator(pad_token_id=0, flatten=True)([[rows[i] for i in sequence] for sequence in plan])
    calls_per_forward = model.config.num_hidden_layers

    def two_forwards() -> list:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lit_lora"), torch.no_grad():
            for _ in range(2):
                model(input_ids=packed["input_ids"], position_ids=packed["position_ids"])
            model(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10]]))  # unpacked: neither said nor counted
        return [(r.levelname, r.getMessage()) for r in caplog.records if "torch_varlen" in r.getMessage()]

    assert two_forwards() == [] and not varlen_attention.PACKED_FORWARDS  # a CPU
    monkeypatch.setattr(varlen_attention, "kernel_device", lambda device: True)  # a GPU with the kernel
    said = two_forwards()
    fallback = "float32 attention, where the kernel needs bfloat16 / float16"
    assert len(said) == 1 and said[0][0] == "WARNING" and f"({fallback})" in said[0][1], said
    assert "attn_implementation: sdpa keeps packed sequences stacked" in said[0][1]
    assert varlen_attention.PACKED_FORWARDS == {fallback: 2 * calls_per_forward}
    calls: list = []
    stand_in_kernel(monkeypatch, calls)
    said = two_forwards()
    assert said == [("INFO", "[lit-lora] torch_varlen: packed rows through torch.nn.attention.varlen "
                              "(FlashAttention varlen)")], said
    assert varlen_attention.PACKED_FORWARDS == {fallback: 2 * calls_per_forward,
                                                varlen_attention.KERNEL: 2 * calls_per_forward}
    assert len(calls) == 2 * calls_per_forward


def test_torch_varlen_flattens_packed_rows_for_the_strategys_device_not_the_modules(tiny_model, monkeypatch):
    """Under DeepSpeed ZeRO-3 no one moves the module (it says the CPU) while the strategy trains on the GPU: whether
    packed rows are flattened for the kernel is asked of the strategy's device."""
    from lit_lora.models import CausalLMModule, varlen_attention

    monkeypatch.setattr(varlen_attention, "kernel_device", lambda device: device.type == "cuda")
    module = CausalLMModule(tiny_model("llama"), attn_implementation="torch_varlen")
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert module.device.type == "cpu" and module.flattens_packed_rows()
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert not module.flattens_packed_rows()


def test_torch_varlen_is_refused_for_a_model_that_does_not_use_attention_interface(tiny_model):
    from lit_lora.errors import IncompatibleConfig
    from lit_lora.models import CausalLMModule
    from lit_lora.models.builder import architecture

    with pytest.raises(IncompatibleConfig, match="torch_varlen runs through transformers' AttentionInterface, "
                                                 "which FalconForCausalLM does not use"):
        architecture(CausalLMModule(tiny_model("falcon"), attn_implementation="torch_varlen"))


# ---- through lit-lora fit ---------------------------------------------------------------------------------
MAX_STEPS = 8
BATCHES_PER_EPOCH = 5
PACKED = ("--data.init_args.packing", "true", "--data.init_args.max_length", "384",
          "--data.init_args.max_tokens_per_batch", "768")  # 20 rows -> 10 sequences -> 5 batches of 2


class BatchLayout(Callback):
    """Record the keys and shape of every training batch."""

    def __init__(self):
        self.seen: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((tuple(sorted(batch)), tuple(batch["input_ids"].shape)))


class FirstStepGradients(Callback):
    """Keep the gradients of the first optimizer step (after accumulation, before the update)."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                          if p.requires_grad and p.grad is not None}


def cli(model_dir: str, root: Path, every: int, *extra: str):
    return resumable_demo_cli(model_dir, root, every, MAX_STEPS, *extra)


def test_a_packed_run_trains_through_the_cli(tiny_model, tmp_path, caplog):
    layout = BatchLayout()
    run = cli(tiny_model("llama"), tmp_path / "run", 4, *PACKED, "--trainer.max_steps", "6")
    run.trainer.callbacks.append(layout)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        fit(run)
    assert run.trainer.global_step == 6
    assert "packing: 20 train rows -> 10 packed sequences of <= 384 tokens" in caplog.text
    assert len(run.trainer.train_dataloader) == BATCHES_PER_EPOCH
    assert layout.seen
    assert all(keys == ("input_ids", "labels", "position_ids", "step_labels") for keys, _ in layout.seen)
    assert all(rows * length <= 768 for _, (rows, length) in layout.seen)
    losses = read_losses(run.trainer.log_dir)
    assert sorted(losses) == list(range(1, 7)) and all(0 < v < 100 for v in losses.values())
    trained = adapter_tensors(Path(run.trainer.log_dir) / "adapter")
    assert any("lora_B" in n and t.abs().max() > 0 for n, t in trained.items())  # LoRA B starts at zero


@pytest.mark.parametrize("stop_at,accumulate,position", [(4, 1, (0, 4)), (BATCHES_PER_EPOCH, 1, (0, 5)),
                                                         (4, 2, (1, 2))],
                         ids=["mid-epoch", "end-of-epoch", "accumulate-2"])
def test_interrupted_packed_run_resumes_step_for_step(stop_at, accumulate, position, tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    extra = (*PACKED, "--trainer.accumulate_grad_batches", str(accumulate))

    full = cli(model_dir, tmp_path / "full", stop_at, *extra)
    fit(full)
    assert full.trainer.global_step == MAX_STEPS
    reference = read_losses(full.trainer.log_dir)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))

    first = cli(model_dir, tmp_path / "interrupted", stop_at, *extra)
    first.trainer.callbacks.append(KillBeforeStep(stop_at))
    with pytest.raises(Killed):
        fit(first)
    ckpt = tmp_path / "interrupted" / "checkpoints" / f"step={stop_at}.ckpt"
    before = read_losses(first.trainer.log_dir)
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == position and state["order"].startswith("packed")

    resumed = cli(model_dir, tmp_path / "resumed", stop_at, *extra)
    fit(resumed, ckpt_path=str(ckpt))
    assert resumed.trainer.global_step == MAX_STEPS
    after = read_losses(resumed.trainer.log_dir)
    assert sorted(after) == list(range(stop_at + 1, MAX_STEPS + 1))  # every step after the resume, once

    # step by step: a repeated or skipped batch shifts the sequence and changes the losses
    for step in range(1, MAX_STEPS + 1):
        got = before[step] if step <= stop_at else after[step]
        assert got == pytest.approx(reference[step], rel=1e-5), (step, got, reference[step])
    assert len(set(round(v, 6) for v in reference.values())) == MAX_STEPS  # losses tell the batches apart
    expected = adapter_tensors(Path(full.trainer.log_dir) / "adapter")
    got = adapter_tensors(Path(resumed.trainer.log_dir) / "adapter")
    assert set(got) == set(expected) and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("budget,accumulate,train_on_prompt", [(4096, 1, "false"), (512, 8, "true")],
                         ids=["one-batch", "accumulated-every-token"])
def test_one_step_has_the_same_gradient_packed_and_unpacked(budget, accumulate, train_on_prompt, tiny_model,
                                                            tmp_path):
    """With ``train_on_prompt`` every row's first label is a token: only the packed -100 keeps the row before
    from predicting it."""
    data = write_code_rows(tmp_path / "rows.jsonl")

    def first_step(name: str, *extra: str):
        grads = FirstStepGradients()
        run = cli(tiny_model("llama"), tmp_path / name, 1, "--data.init_args.source", str(data),
                  "--data.init_args.validation_source", str(data), "--data.init_args.max_samples", "100",
                  "--data.init_args.max_length", "512", "--data.init_args.train_on_prompt", train_on_prompt,
                  "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *extra)
        run.trainer.callbacks.append(grads)
        fit(run)
        return grads.grads, run

    unpacked, _ = first_step("unpacked", "--data.init_args.batch_size", "8")
    packed, run = first_step("packed", "--data.init_args.packing", "true", "--data.init_args.batch_size", "8",
                             "--data.init_args.max_tokens_per_batch", str(budget),
                             "--trainer.accumulate_grad_batches", str(accumulate))
    batches = len(run.trainer.train_dataloader)
    assert (batches == 1) if accumulate == 1 else (1 < batches <= accumulate)  # one step covers every row
    assert set(packed) == set(unpacked) and any(g.abs().max() > 1e-3 for g in unpacked.values())
    for name, grad in unpacked.items():
        torch.testing.assert_close(packed[name], grad, rtol=0, atol=1e-5, msg=name)


def test_a_torch_varlen_step_has_the_gradient_of_an_sdpa_step(tiny_model, tmp_path, monkeypatch, caplog,
                                                              torch_kernel_on_cpu):
    """``lit-lora fit`` with packing and ``attn_implementation: torch_varlen`` on a CPU, through PyTorch's own
    ``varlen_attn`` and its autograd over a reference FlashAttention (see above): the batches arrive as one
    flattened row, every layer hands the kernel the row boundaries, and the first step's gradient is the sdpa
    run's, whose packed sequences are stacked. As this CPU is (no kernel) the run is the sdpa run: the same
    stacked batches and gradient."""
    from lit_lora.models import varlen_attention

    calls = torch_kernel_on_cpu
    data = write_code_rows(tmp_path / "rows.jsonl")

    def first_step(attn: str, name: str = ""):
        grads, layout = FirstStepGradients(), BatchLayout()
        run = cli(tiny_model("llama"), tmp_path / (name or attn), 1, "--data.init_args.source", str(data),
                  "--data.init_args.validation_source", str(data), "--data.init_args.max_samples", "100",
                  "--data.init_args.max_length", "512", "--data.init_args.packing", "true",
                  "--data.init_args.batch_size", "8", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                  "--model.init_args.attn_implementation", attn)
        run.trainer.callbacks.extend([grads, layout])
        fit(run)
        return grads.grads, layout.seen

    sdpa, sdpa_batches = first_step("sdpa")
    assert calls == [] and all(rows > 1 for _, (rows, _) in sdpa_batches)
    varlen, varlen_batches = first_step("torch_varlen")
    assert [rows for _, (rows, _) in varlen_batches] == [1] and calls  # one flattened row through the kernel
    assert all(len(boundaries) > 2 and boundaries[-1] == varlen_batches[0][1][1] for boundaries in calls)
    assert set(varlen) == set(sdpa) and any(g.abs().max() > 1e-3 for g in sdpa.values())
    for name, grad in sdpa.items():
        torch.testing.assert_close(varlen[name], grad, rtol=0, atol=1e-5, msg=name)

    # the same config on this CPU as it is: no kernel, so the packed sequences stay stacked as for sdpa, and it says so
    monkeypatch.undo()
    monkeypatch.setattr(varlen_attention, "SAID", set())
    monkeypatch.setattr(varlen_attention, "PACKED_FORWARDS", Counter())
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        on_cpu, on_cpu_batches = first_step("torch_varlen", "torch_varlen-cpu")
    assert on_cpu_batches == sdpa_batches and not varlen_attention.PACKED_FORWARDS  # stacked: neither path taken
    assert "packed rows run through sdpa" not in caplog.text  # no fallback warning for the stacked sdpa run
    assert ("torch_varlen: its kernel needs a CUDA GPU of compute 8.0 or newer, not cpu: packed sequences stay "
            "stacked and run through sdpa") in caplog.text
    for name, grad in sdpa.items():
        torch.testing.assert_close(on_cpu[name], grad, rtol=0, atol=0, msg=name)
