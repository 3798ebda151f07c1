import numpy as np
import pytest

from keras_supcon.evaluation import classification_metrics


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
