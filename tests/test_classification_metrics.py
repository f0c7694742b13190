"""Classification metrics equal a hand computation on a fixed prediction set."""

import pytest
import torch
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

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


# Macro averages run over the classes that occur, as torchmetrics' average="macro" does: a small evaluation set
# (max_eval_samples, incontext --max_rows) often lacks a class, and counting it as a 0 would report a perfect
# classifier's macro F1 as 0.667 on a 3-label task.
@pytest.mark.parametrize("gold, pred", [
    ([0, 0, 2, 2], [0, 0, 2, 2]),          # "neutral" neither gold nor predicted: a perfect score is 1
    ([0, 0, 2, 2, 0], [0, 2, 2, 0, 0]),    # still absent, mistakes between the other two
    ([0, 0, 2, 2], [0, 1, 2, 2]),          # predicted but never gold: it counts (precision 0)
])
def test_macro_averages_equal_torchmetrics_when_a_class_is_absent(gold, pred):
    metrics = ClassificationMetrics(LABELS)
    metrics.update(torch.tensor(pred), torch.tensor(gold))
    scalars, _ = metrics.compute()
    for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score)):
        reference = float(cls(3, average="macro")(torch.tensor(pred), torch.tensor(gold)))
        assert scalars[f"{name}_macro"] == pytest.approx(reference), name


def test_an_unparseable_answer_counts_against_its_gold_class_only():
    """Gold {0, 2}; one answer of class 2 unparseable: class 1 stays out of the mean, class 2 loses recall."""
    metrics = ClassificationMetrics(LABELS, allow_unparseable=True)
    metrics.update(torch.tensor([0, 0, 2, -1]), torch.tensor([0, 0, 2, 2]))
    scalars, _ = metrics.compute()
    assert scalars["precision_macro"] == pytest.approx(1.0)
    assert scalars["recall_macro"] == pytest.approx((1.0 + 0.5) / 2)
    assert scalars["f1_macro"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scalars["f1/neutral"] == 0.0 and scalars["unparseable"] == 1.0
