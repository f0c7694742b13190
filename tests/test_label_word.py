"""Label-word fine-tuning of a causal LM: response-only labels, likelihood and generation evaluation."""

import shutil

import lightning as L
import pytest
import torch
from harness import quiet_trainer

from lit_lora.adapters import LoRA
from lit_lora.data.nli_prompts import MultiNLILabelWordDataModule, SNLILabelWordDataModule
from lit_lora.evaluation.likelihood import candidate_log_likelihoods
from lit_lora.models.label_word import LabelWordModule
from lit_lora.optim import OptimizerSettings

LABELS = ["entailment", "neutral", "contradiction"]


def test_loss_covers_the_label_word_only(tiny_model):
    dm = SNLILabelWordDataModule(tokenizer_name_or_path=tiny_model("llama"))
    dm.setup()
    tok = dm.tokenizer
    for row in dm.datasets["train"].select(range(5)):
        answer = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert answer == tok(row["reference"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert row["reference"] in LABELS and "Hypothesis:" in row["prompt"]
    assert sum(dm.drop_counts["train"].values()) > 0  # SNLI -1 rows, counted here too


def test_chat_template_with_system_instruction(tiny_model, tmp_path):
    path = tmp_path / "chat-llama"
    shutil.copytree(tiny_model("llama"), path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    tok.save_pretrained(path)
    dm = MultiNLILabelWordDataModule(tokenizer_name_or_path=str(path), template="chat",
                                     system_prompt="You label NLI pairs.", max_samples=8)
    dm.setup()
    row = dm.datasets["train"][0]
    assert row["prompt"].startswith("<s>system: You label NLI pairs.") and row["prompt"].endswith("assistant: ")
    answer = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    assert tok.decode(answer, skip_special_tokens=True) == row["reference"]


def test_likelihoods_equal_unpadded_scoring(tiny_model):
    from transformers import AutoModelForCausalLM

    from lit_lora.data.base import load_tokenizer

    tok = load_tokenizer(tiny_model("llama"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    prompts = ["Premise: The girl is running.\nHypothesis: A girl is running.\nAnswer:",
               "Premise: The old knight is laughing in the forest.\nHypothesis: Nobody is laughing.\nAnswer:"]
    scores = candidate_log_likelihoods(model, tok, prompts, LABELS)
    assert scores.shape == (2, 3)
    for i, prompt in enumerate(prompts):
        for j, word in enumerate(LABELS):
            p = tok(prompt)["input_ids"]
            c = tok(word, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                logp = model(torch.tensor([p + c])).logits[0].log_softmax(-1)
            expected = sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c))
            assert scores[i, j].item() == pytest.approx(float(expected), abs=1e-4)


def make_run(path, steps):
    L.seed_everything(0)
    dm = MultiNLILabelWordDataModule(tokenizer_name_or_path=path, batch_size=16, max_length=128)
    module = LabelWordModule(model_name_or_path=path, adapter=LoRA(r=8, alpha=16, dropout=0.0), tokenizer=dm.tokenizer,
                             optim=OptimizerSettings(lr=3e-3, warmup_steps=0))
    trainer = quiet_trainer(max_steps=max(steps, 1), num_sanity_val_steps=0, val_check_interval=max(steps, 1),
                            check_val_every_n_epoch=None, limit_train_batches=None)
    return dm, module, trainer


def test_untrained_answers_are_unparseable_and_counted_wrong(tiny_model):
    dm, module, trainer = make_run(tiny_model("llama"), 1)
    trainer.validate(module, dm)
    details = module.extra_metrics["val_matched/generation"]
    unparseable = details["unparseable"]
    assert unparseable == trainer.callback_metrics["val_matched/generation/unparseable"] > 0
    assert len(details["unparseable_examples"]) == min(unparseable, 5)
    correct = sum(details["confusion_matrix"][i][i] for i in range(3))
    assert correct <= details["n"] - unparseable
    assert float(trainer.callback_metrics["val_matched/generation/accuracy"]) == pytest.approx(correct / details["n"])


def test_label_word_finetuning_beats_chance_both_ways(tiny_model):
    dm, module, trainer = make_run(tiny_model("llama"), 150)
    trainer.fit(module, dm)
    for name in ("val_matched", "val_mismatched"):
        gold = list(dm.datasets[name.split("_")[1]]["reference"])
        majority = max(gold.count(w) for w in LABELS) / len(gold)
        for method in ("likelihood", "generation"):
            accuracy = float(trainer.callback_metrics[f"{name}/{method}/accuracy"])
            assert accuracy > majority + 0.1, f"{name} {method}: {accuracy:.3f} vs majority {majority:.3f}"
        assert f"{name}/generation/unparseable" in trainer.callback_metrics


def test_evaluating_on_training_rows_fails_unless_allowed(tiny_model):
    import dataclasses

    from lit_lora.evaluation.overlap import TrainOverlapError

    dm, module, trainer = make_run(tiny_model("llama"), 1)
    dm.eval_sources = {"matched": "multinli_train.jsonl"}  # evaluate on the training file itself
    dm.max_eval_samples = 8
    with pytest.raises(TrainOverlapError, match=r"matched"):
        trainer.validate(module, dm)
    module.evaluation = dataclasses.replace(module.evaluation, allow_train_overlap=True, generate=False)
    trainer.validate(module, dm)
    assert module.extra_metrics["train_overlap"]["matched"]["count"] > 0
    assert module.extra_metrics["train_overlap"]["matched"]["allowed"] is True
