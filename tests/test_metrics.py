import math

import numpy as np
import pytest

from keras_supcon.evaluation import classification_metrics
from keras_supcon.evaluation.metrics import mcnemar


def reference(y, probs, num_classes):
    """Plain loops from the definitions (macro averages over all classes)."""
    pred = [max(range(num_classes), key=lambda c: p[c]) for p in probs]
    cm = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y, pred):
        cm[t][p] += 1
    prec, rec, f1 = [], [], []
    for c in range(num_classes):
        tp = cm[c][c]
        predicted = sum(cm[r][c] for r in range(num_classes))
        actual = sum(cm[c])
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        prec.append(p)
        rec.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    k = min(5, num_classes)
    topk = sum(t in sorted(range(num_classes), key=lambda c: -p[c])[:k]
               for t, p in zip(y, probs)) / len(y)
    return {
        "accuracy": sum(t == p for t, p in zip(y, pred)) / len(y),
        "precision_macro": sum(prec) / num_classes,
        "recall_macro": sum(rec) / num_classes,
        "f1_macro": sum(f1) / num_classes,
        f"top{k}_accuracy": topk,
        "confusion_matrix": cm,
    }


@pytest.mark.parametrize("n,num_classes,seed", [(50, 3, 0), (200, 10, 1), (7, 6, 2)])
def test_metrics_match_plain_loops(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    probs = rng.dirichlet(np.ones(num_classes), size=n)
    probs[np.arange(n) % 2 == 0, y[np.arange(n) % 2 == 0]] += 0.5  # better than chance
    names = [f"c{i}" for i in range(num_classes)]
    got = classification_metrics(y, probs, names)
    expected = reference(list(y), probs.tolist(), num_classes)
    for key, value in expected.items():
        if key == "confusion_matrix":
            assert got[key] == value
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key
    cm = np.array(expected["confusion_matrix"])
    for c, name in enumerate(names):
        support = cm[c].sum()
        expected_acc = cm[c, c] / support if support else 0
        assert got["per_class_accuracy"][name] == pytest.approx(expected_acc)
    assert got["class_names"] == names and got["num_examples"] == n


def ref_mcnemar(first, second):
    """Exact McNemar from its definition: the disagreements split as Binomial(n, 1/2); p
    sums the probabilities of every split no more likely than the one seen."""
    b = sum(f and not s for f, s in zip(first, second))
    c = sum(s and not f for f, s in zip(first, second))
    n = b + c
    prob = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return b, c, min(1.0, sum(q for q in prob if q <= prob[b] * (1 + 1e-12)))


@pytest.mark.parametrize("n,p_first,p_second,seed", [
    (30, 0.5, 0.5, 0), (200, 0.7, 0.8, 1), (1017, 0.70, 0.71, 2), (12, 0.9, 0.2, 3),
    (5, 1.0, 1.0, 4)])  # the last: no disagreement, p = 1
def test_mcnemar_matches_reference(n, p_first, p_second, seed):
    rng = np.random.default_rng(seed)
    first, second = rng.random(n) < p_first, rng.random(n) < p_second
    got = mcnemar(first, second)
    b, c, p = ref_mcnemar(first.tolist(), second.tolist())
    assert got[:2] == (b, c)
    assert got[2] == pytest.approx(p, rel=1e-9)
    assert mcnemar(second, first) == (c, b, pytest.approx(p, rel=1e-9))


def test_mcnemar_rejects_unpaired_answers():
    with pytest.raises(ValueError, match="answered"):
        mcnemar([True, False], [True])
