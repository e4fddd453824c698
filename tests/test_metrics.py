"""zoo.metrics against scikit-learn (and a plain loop for calibration) on random logits."""
import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from zoo.metrics import calibration, classification_report, softmax
from zoo.training.metrics import classification_report as training_report


@pytest.mark.parametrize(("n", "k", "seed"), [(200, 7, 0), (50, 3, 1), (31, 2, 2), (400, 12, 3)])
def test_the_report_agrees_with_sklearn_per_class_included(n, k, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    y = rng.integers(0, k, size=n)
    y[:k - 1] = np.arange(k - 1)  # every class but the last appears; the last may be missing
    probs = softmax(logits)
    classes = [f"c{i}" for i in range(k)]
    report = classification_report(probs, y, classes)
    pred = logits.argmax(1)
    labels = list(range(k))
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert report["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
    assert report["loss"] == pytest.approx(sk.log_loss(y, probs, labels=labels))
    assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(torch.tensor(logits),
                                                                                   torch.tensor(y))))
    p, r, f, s = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        row = report["per_class"][c]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    present = s > 0
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y, pred, labels=np.flatnonzero(present), average="macro",
                                                           zero_division=0))
    assert report["min_recall"] == pytest.approx(r[present].min())
    top_k = report["top_k"]
    expected = sk.top_k_accuracy_score(y, probs, k=top_k["k"], labels=labels) if k > 2 else sk.accuracy_score(y, pred)
    assert top_k["accuracy"] == pytest.approx(expected)
    from_logits = training_report(torch.tensor(logits), torch.tensor(y), classes)  # training's path: the same code
    assert from_logits["confusion_matrix"] == report["confusion_matrix"]
    assert from_logits["macro_f1"] == pytest.approx(report["macro_f1"])


def test_expected_calibration_error_matches_a_plain_loop_over_bins():
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(scale=2.0, size=(300, 5)))
    y = rng.integers(0, 5, size=300)
    result = calibration(probs, y, bins=10)
    confidence, correct = probs.max(1), probs.argmax(1) == y
    ece = 0.0
    for b in range(10):
        low, high = b / 10, (b + 1) / 10
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert result["ece"] == pytest.approx(ece)
    assert sum(result["counts"]) == 300
    perfect = np.eye(5)[y]  # always right with confidence 1: perfectly calibrated
    assert calibration(perfect, y)["ece"] == pytest.approx(0.0)
