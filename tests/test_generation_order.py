"""Evaluation generation sorted by prompt length: answers in the prompts' order, identical to one-by-one
greedy answers, less padding than batches in dataset order, batches bounded by rows and tokens, ranks
agreeing on the batches, and evaluation rows answered once at the end of the epoch in loader order."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch

from lit_lora.data.base import load_tokenizer
from lit_lora.evaluation import generation
from lit_lora.evaluation.generation import GenerationSettings, batch_sizes, generate_texts

WORDS = "sort the list of numbers and return the sum of every even value in it".split()
# lengths that dataset-order batches of three pad badly: long and short prompts alternate
PROMPTS = [" ".join(WORDS[:n]) for n in (2, 14, 3, 13, 4, 12, 5, 11, 6, 10)]


def load(path: str, seq2seq: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path)
    return model.eval(), load_tokenizer(path)


class GenerateSpy:
    """Wraps ``model.generate``: the attention mask of every call."""

    def __init__(self, model):
        self.masks: list[torch.Tensor] = []
        self.original = model.generate
        model.generate = self

    def __call__(self, **kwargs):
        self.masks.append(kwargs["attention_mask"].cpu())
        return self.original(**kwargs)

    @property
    def pads(self) -> int:
        return sum(int((m == 0).sum()) for m in self.masks)


def padding_of(lengths: list[int], size: int) -> int:
    """Pad tokens of batches of ``size`` rows taken in the given order, each padded to its longest row."""
    chunks = [lengths[i:i + size] for i in range(0, len(lengths), size)]
    return sum(max(c) * len(c) - sum(c) for c in chunks)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_sorted_batches_answer_in_prompt_order_as_one_by_one(tiny_model, arch):
    model, tokenizer = load(tiny_model(arch), seq2seq=arch == "t5")
    settings = GenerationSettings(max_new_tokens=10, generation_batch_size=3)
    batched = generate_texts(model, tokenizer, PROMPTS, settings, encoder_decoder=arch == "t5")
    single = [generate_texts(model, tokenizer, [p], settings, encoder_decoder=arch == "t5")[0] for p in PROMPTS]
    assert batched == single  # greedy: same answers, each at its prompt's place
    whole = generate_texts(model, tokenizer, PROMPTS, replace(settings, generation_batch_size=64),
                           encoder_decoder=arch == "t5")
    assert whole == single
    assert len({out.text for out in batched}) > 1  # the prompts do get different answers


def test_sorting_pads_less_than_dataset_order(tiny_model):
    model, tokenizer = load(tiny_model("llama"), seq2seq=False)
    lengths = [len(ids) for ids in tokenizer(PROMPTS)["input_ids"]]
    spy = GenerateSpy(model)
    generate_texts(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=4, generation_batch_size=3))
    assert [len(m) for m in spy.masks] == [3, 3, 3, 1]
    widths = [m.shape[1] for m in spy.masks]
    assert widths == sorted(widths, reverse=True) and widths[0] == max(lengths)  # longest first
    assert spy.pads == padding_of(sorted(lengths, reverse=True), 3)
    assert spy.pads < padding_of(lengths, 3) / 2  # dataset order pads more than twice as much here
    assert all(bool(m[:, -1].all()) for m in spy.masks)  # left padding: every prompt ends at the last column


def test_batches_hold_at_most_the_rows_and_the_tokens():
    settings = GenerationSettings(max_new_tokens=10, generation_batch_size=4, generation_batch_tokens=100)
    assert batch_sizes([40, 30, 10, 10, 10, 10, 5, 5], settings) == [2, 4, 2]  # 2 x 50, 4 x 20, 2 x 15 slots
    assert batch_sizes([500, 10], settings) == [1, 1]  # a prompt over the budget still goes, alone
    assert batch_sizes([40] * 9, replace(settings, generation_batch_tokens=None)) == [4, 4, 1]
    assert batch_sizes([40, 30], replace(settings, num_beams=2)) == [1, 1]  # beams multiply the slots
    assert batch_sizes([], settings) == []


def test_ranks_agree_on_the_batches(monkeypatch):
    """Each rank plans with the longest i-th prompt of all ranks, so all call ``generate`` equally often."""
    ranks = {0: [50, 10, 5, 5], 1: [20, 20, 20, 20]}
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)

    def gather(parts, obj, group=None):
        parts[:] = [obj if r == me else ranks[r] for r in ranks]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    settings = GenerationSettings(max_new_tokens=10, generation_batch_size=4, generation_batch_tokens=120)
    plans = []
    for me in ranks:
        agreed = generation.agreed_lengths(ranks[me])
        assert agreed == [50, 20, 20, 20]
        plans.append(batch_sizes(agreed, settings))
    assert plans[0] == plans[1] == [2, 2]  # alone, rank 1 would make one call of 4 rows
    assert batch_sizes(ranks[1], settings) == [4]


def test_evaluation_answers_once_at_the_end_in_loader_order(tiny_model, tmp_path):
    """Loader batches of 2, generation batches of 4: 7 rows in 2 ``generate`` calls, predictions in row order,
    each the greedy one-by-one answer."""
    from lit_lora.adapters import LoRA
    from lit_lora.data import InstructionDataModule
    from lit_lora.models import CausalLMModule

    path = tiny_model("llama")
    dm = InstructionDataModule(tokenizer_name_or_path=path, max_samples=100, max_eval_samples=7, eval_batch_size=2,
                               template="plain")
    settings = GenerationSettings(max_new_tokens=6, generation_batch_size=4)
    module = CausalLMModule(path, adapter=LoRA(r=4, alpha=8), tokenizer=dm.tokenizer, evaluation=settings)
    module.configure_model()
    spy = GenerateSpy(module.model)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    metrics = trainer.validate(module, dm, verbose=False)[0]
    prompts = dm.datasets["validation"]["prompt"]
    assert [len(m) for m in spy.masks] == [4, 3]
    assert metrics["val_generated_rows"] == 7 and [r["prompt"] for r in module.predictions] == prompts
    assert [r["index"] for r in module.predictions] == list(range(7))
    model = module.model.eval()
    for row, prompt in zip(module.predictions, prompts):
        alone = generate_texts(model, dm.tokenizer, [prompt], settings, max_length=dm.max_length)[0]
        assert (row["prediction"], row["hit_max_new_tokens"]) == (alone.text, alone.hit_limit)
    written = (tmp_path / settings.predictions_file).read_text().splitlines()
    assert len(written) == 7


def test_label_word_answers_every_set_at_the_end_with_its_examples_in_row_order(tiny_model, tmp_path):
    """Matched and mismatched sets in loader batches of 4: their answers come from one sorted pass; metrics
    and unparseable examples are those of one-by-one answers, in row order."""
    from lit_lora.adapters import LoRA
    from lit_lora.data.nli_prompts import MultiNLILabelWordDataModule
    from lit_lora.evaluation.labels import label_index
    from lit_lora.evaluation.evaluators.label_word import MAX_EXAMPLES
    from lit_lora.models.label_word import LabelWordModule

    path = tiny_model("llama")
    dm = MultiNLILabelWordDataModule(tokenizer_name_or_path=path, max_samples=40, max_eval_samples=9,
                                     eval_batch_size=4, max_length=128)
    module = LabelWordModule(model_name_or_path=path, adapter=LoRA(r=4, alpha=8), tokenizer=dm.tokenizer,
                             label_names=list(dm.label_names))
    module.configure_model()
    spy = GenerateSpy(module.model)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.validate(module, dm, verbose=False)
    assert [len(m) for m in spy.masks] == [18]  # both sets' 9 rows, one call (not one per loader batch of 4)
    model = module.model.eval()
    for name in dm.eval_names:
        rows = dm.datasets[name]
        answers = [generate_texts(model, dm.tokenizer, [p], module.evaluation)[0].text for p in rows["prompt"]]
        parsed = [label_index(a, module.label_names) for a in answers]
        details = module.extra_metrics[f"val_{name}/generation"]
        assert details["unparseable"] == parsed.count(-1) and details["n"] == len(rows)
        expected = [{"answer": a, "gold": g} for a, g, p in zip(answers, rows["reference"], parsed) if p == -1]
        assert expected and details["unparseable_examples"] == expected[:MAX_EXAMPLES]  # untrained: some unparseable
        correct = sum(p == module.label_names.index(g) for p, g in zip(parsed, rows["reference"]))
        assert sum(details["confusion_matrix"][i][i] for i in range(3)) == correct
