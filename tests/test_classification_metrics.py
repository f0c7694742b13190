"""Classification metrics equal a hand computation on a fixed prediction set."""

import pytest
import torch

from lit_lora.evaluation.classification import ClassificationMetrics

LABELS = ["entailment", "neutral", "contradiction"]
GOLD = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
PRED = [0, 1, 0, 1, 2, 2, 2, 0, -1, -1]  # -1: two unparseable answers


def hand_counts(gold, pred, k):
    tp = [sum(g == p == c for g, p in zip(gold, pred)) for c in range(k)]
    fp = [sum(p == c and g != c for g, p in zip(gold, pred)) for c in range(k)]
    fn = [sum(g == c and p != c for g, p in zip(gold, pred)) for c in range(k)]
    return tp, fp, fn


def test_metrics_match_hand_computation_with_unparseable():
    metrics = ClassificationMetrics(LABELS, allow_unparseable=True)
    # two updates, as two batches would
    metrics.update(torch.tensor(PRED[:4]), torch.tensor(GOLD[:4]))
    metrics.update(torch.tensor(PRED[4:]), torch.tensor(GOLD[4:]))
    scalars, details = metrics.compute()

    tp, fp, fn = hand_counts(GOLD, PRED, 3)
    precision = [t / (t + f) if t + f else 0.0 for t, f in zip(tp, fp)]
    recall = [t / (t + f) if t + f else 0.0 for t, f in zip(tp, fn)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    assert scalars["accuracy"] == pytest.approx(sum(tp) / len(GOLD))
    assert scalars["precision_macro"] == pytest.approx(sum(precision) / 3)
    assert scalars["recall_macro"] == pytest.approx(sum(recall) / 3)
    assert scalars["f1_macro"] == pytest.approx(sum(f1) / 3)
    for i, name in enumerate(LABELS):
        assert scalars[f"f1/{name}"] == pytest.approx(f1[i])
    assert scalars["unparseable"] == PRED.count(-1) == details["unparseable"]
    expected_cm = [[sum(g == r and p == c for g, p in zip(GOLD, PRED)) for c in (0, 1, 2, -1)] for r in range(3)]
    assert details["confusion_matrix"] == expected_cm
    assert details["support"] == {name: GOLD.count(i) for i, name in enumerate(LABELS)}


def test_reset_and_strictness():
    metrics = ClassificationMetrics(LABELS)
    metrics.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert metrics.compute()[0]["accuracy"] == 1.0
    metrics.reset()
    metrics.update(torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert metrics.compute()[0]["accuracy"] == 0.5
    with pytest.raises(ValueError, match="unparseable"):
        metrics.update(torch.tensor([-1]), torch.tensor([0]))
