"""``lit-lora incontext``: k-shot prompts that read as question / answer blocks, scores that count what the rows say,
and an output directory per evaluation.

    python -m pytest tests/test_incontext.py
"""

from __future__ import annotations

import json
import logging

from harness import DEMO, cli_exit, run_cli_subprocess

from lit_lora.data import MultiNLIDataModule, SNLIDataModule
from lit_lora.evaluation.incontext import build_prompts


def test_classification_demonstrations_end_in_an_answer_cue_before_their_label(tiny_model):
    """Without a chat template a demonstration is ``…Answer: <label>`` then a blank line, and the evaluated pair
    ends with ``Answer:`` (the label never runs on from the instruction's last word)."""
    dm = MultiNLIDataModule(tokenizer_name_or_path=tiny_model("llama"), max_eval_samples=4)
    assert not getattr(dm.tokenizer, "chat_template", None)
    for record in build_prompts(dm, 2, seed=0, use_chat_template=False):
        blocks = record["prompt"].split("\n\n")
        assert len(blocks) == 3 and blocks[-1] == record["query"] and record["query"].endswith("\nAnswer:")
        assert record["query"].startswith("Premise: ")
        for block in blocks[:2]:
            label = block.rsplit("\nAnswer: ", 1)[1]
            assert label in dm.label_names, block


def test_scores_count_truncated_answers_and_each_evaluation_gets_its_own_directory(tiny_model, tmp_path, monkeypatch):
    args = ["incontext", "--config", DEMO, "--model.init_args.model_name_or_path", tiny_model("llama"),
            "--model.init_args.evaluation.max_new_tokens", "3", "--shots", "0", "1", "--max_rows", "4",
            "--trainer.default_root_dir", str(tmp_path)]
    first = run_cli_subprocess(args, via="module", cwd=tmp_path)
    out_dir = tmp_path / "incontext"
    assert f"wrote {out_dir / 'incontext.json'}" in first.stderr, first.stderr[-2000:]
    scores = json.loads((out_dir / "incontext.json").read_text())
    assert json.loads(first.stdout) == scores  # stdout is the scores alone
    assert "incontext 1-shot: 4 rows of the validation split" in first.stderr
    for k in (0, 1):
        rows = [json.loads(line) for line in (out_dir / f"predictions_{k}shot.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        truncated = sum(r["hit_max_new_tokens"] for r in rows)  # a count, as lit-lora test reports it
        assert truncated > 0 and scores[f"{k}-shot"]["hit_max_new_tokens"] == truncated

    second = run_cli_subprocess(args, via="module", cwd=tmp_path)
    assert f"wrote {tmp_path / 'incontext_1' / 'incontext.json'}" in second.stderr
    assert json.loads((out_dir / "incontext.json").read_text()) == scores  # the first evaluation untouched

    monkeypatch.chdir(tmp_path)
    status, line = cli_exit([*args, "--out_dir", str(out_dir)])
    assert status == 1 and line.startswith(f"lit-lora incontext: {out_dir} holds an earlier evaluation"), line


def test_every_prompt_of_a_shot_count_goes_to_one_sorted_batched_generation(tiny_model, tmp_path, monkeypatch):
    """The prompts are answered by one ``generate_texts`` call (which sorts and batches them by
    ``generation_batch_size``), not in slices of the data's ``eval_batch_size``."""
    import dataclasses

    from lit_lora.adapters import NoAdapter
    from lit_lora.evaluation import incontext
    from lit_lora.models import CausalLMModule

    calls = []
    real = incontext.generate_texts

    def counted(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(incontext, "generate_texts", counted)
    model = tiny_model("llama")
    dm = MultiNLIDataModule(tokenizer_name_or_path=model, max_eval_samples=6, eval_batch_size=2)
    module = CausalLMModule(model, adapter=NoAdapter(), tokenizer=dm.tokenizer)
    module.evaluation = dataclasses.replace(module.evaluation, generate=True, max_new_tokens=2)
    results = incontext.evaluate_incontext(module, dm, [0, 1], seed=0, split=None, max_rows=6, out_dir=tmp_path)
    assert calls == [6, 6] and set(results) == {"0-shot", "1-shot"}
    for k in (0, 1):  # classification scores count cut answers too, as generation scores do
        rows = [json.loads(line) for line in (tmp_path / f"predictions_{k}shot.jsonl").read_text().splitlines()]
        assert results[f"{k}-shot"]["hit_max_new_tokens"] == sum(r["hit_max_new_tokens"] for r in rows) > 0


def test_a_prompt_learning_adapter_of_the_config_is_off_while_the_pretrained_model_answers(tiny_model, tmp_path):
    """The config's adapter is untrained: prompt tuning would prepend random virtual tokens, scoring a
    random-prompt model. The answers are the pretrained model's, as with no adapter at all."""
    import dataclasses

    from lit_lora.adapters import NoAdapter, PromptTuning
    from lit_lora.evaluation import incontext
    from lit_lora.models import CausalLMModule

    model, answers = tiny_model("llama"), {}
    for name, adapter in (("none", NoAdapter()), ("prompt_tuning", PromptTuning(num_virtual_tokens=8))):
        dm = MultiNLIDataModule(tokenizer_name_or_path=model, max_eval_samples=4)
        module = CausalLMModule(model, adapter=adapter, tokenizer=dm.tokenizer)
        module.evaluation = dataclasses.replace(module.evaluation, generate=True, max_new_tokens=6)
        incontext.evaluate_incontext(module, dm, [0], seed=0, split=None, max_rows=4, out_dir=tmp_path / name)
        lines = (tmp_path / name / "predictions_0shot.jsonl").read_text().splitlines()
        answers[name] = [json.loads(line)["prediction"] for line in lines]
    assert answers["prompt_tuning"] == answers["none"] and len(answers["none"]) == 4


def test_rows_without_a_gold_label_are_skipped_counted_and_logged(caplog):
    """SNLI's "no gold label" rows (-1) are left out of the scores, and the log says how many and why."""
    dm = SNLIDataModule(tokenizer_name_or_path="lit_lora/assets/tiny-llama")
    raw = dm.load_raw_splits()
    no_gold = sum(row["label"] == -1 for row in raw["validation"])
    assert no_gold > 0  # the bundled sample has such rows
    with caplog.at_level(logging.WARNING, logger="lit_lora"):
        records = build_prompts(dm, 0, split="validation")
    assert len(records) == len(raw["validation"]) - no_gold
    lines = [r.getMessage() for r in caplog.records if "incontext validation" in r.getMessage()]
    assert lines == [f"[lit-lora] incontext validation: skipped {no_gold} of {len(raw['validation'])} rows "
                     f"({no_gold} no gold label (-1))"], json.dumps([r.getMessage() for r in caplog.records])
