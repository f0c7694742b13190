"""Generation metrics: equal to a direct torchmetrics computation, offline ROUGE, exact match, perplexity."""

import math

import pytest
import torch
from torchmetrics.functional.text import rouge_score, sacre_bleu_score

from lit_lora.evaluation.text_metrics import TextMetrics, score_rows

PREDS = ["def add(a, b):\n    return a + b", "the cat sat on the mat", "print(x)", ""]
REFS = ["def add(a, b):\n    return a + b", "the cat is on the mat", "print(y)", "return None"]


def test_bleu_and_rouge_equal_direct_torchmetrics():
    metrics = TextMetrics()
    metrics.update(PREDS[:2], REFS[:2])
    metrics.update(PREDS[2:], REFS[2:])  # two batches accumulate like one
    out = metrics.compute()
    assert out["bleu"] == pytest.approx(float(sacre_bleu_score(PREDS, [[r] for r in REFS], tokenize="13a")))
    direct = rouge_score(PREDS, REFS, rouge_keys=("rouge1", "rouge2", "rougeL"))
    for key, value in direct.items():
        assert out[key] == pytest.approx(float(value)), key
    assert 0 < out["rougeL_fmeasure"] < 1


def test_rouge_needs_no_nltk_download(monkeypatch):
    nltk = pytest.importorskip("nltk")

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download NLTK data")

    monkeypatch.setattr(nltk, "download", refuse)
    out = score_rows(["one sentence. And another one."], ["one sentence. And another."])
    assert out["rouge1_recall"] == pytest.approx(1.0)


def test_exact_match_ignores_whitespace_only_and_counts_cut_off_answers():
    out = score_rows(["return  a+b\n", "Return a+b", "x"], ["return a+b", "return a+b", "y"], [False, False, True])
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["hit_max_new_tokens"] == 1


def test_perplexity_is_exp_of_token_weighted_loss():
    metrics = TextMetrics()
    metrics.update_loss(torch.tensor(1.0), 1)
    metrics.update_loss(torch.tensor(2.0), 3)
    out = metrics.compute()
    assert out["loss"] == pytest.approx(1.75)
    assert out["perplexity"] == pytest.approx(math.exp(1.75))


def test_a_non_finite_batch_loss_makes_the_evaluation_loss_non_finite(caplog):
    """torchmetrics' default drops NaN values from a mean with a warning; an evaluation loss must not hide one."""
    from lit_lora.evaluation.text_metrics import TextMetrics

    metrics = TextMetrics(sync_on_compute=False)
    metrics.update_loss(torch.tensor(2.0), 10)
    metrics.update_loss(torch.tensor(float("nan")), 5)
    with caplog.at_level("WARNING", logger="lit_lora"):
        loss = metrics.compute()["loss"]
    assert math.isnan(loss)
    assert "non-finite" in caplog.text


def test_a_non_finite_batch_loss_makes_its_eval_set_loss_non_finite():
    from types import SimpleNamespace

    from lit_lora.evaluation.evaluators.eval_sets import EvalSetMetrics

    logged = {}
    module = SimpleNamespace(device=torch.device("cpu"), trainer=SimpleNamespace(val_dataloaders=[0]),
                             log=lambda name, value, **kw: logged.__setitem__(name, float(value)))
    sets = EvalSetMetrics()
    sets.update_loss(module, "val", 0, torch.tensor(20.0), torch.tensor(10))
    sets.update_loss(module, "val", 0, torch.tensor(float("nan")), torch.tensor(5))
    sets.log(module, "val", {})
    assert math.isnan(logged["val/loss"])
