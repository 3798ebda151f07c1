"""Classification metrics of a test split (scikit-learn)."""

import numpy as np
from sklearn import metrics as skm

EVAL_BATCH = 256  # batch size of every evaluation pass (predictions, embeddings, pruning)


def predict(model, ds, verbose=0):
    """``model.predict`` over a batched ``(x, y)`` tf.data dataset (Keras' progress
    bar at ``verbose``): ``(outputs [N, ...], labels [N])``."""
    outputs = model.predict(ds.map(lambda x, y: x), verbose=verbose)
    labels = np.concatenate([np.asarray(y) for y in ds.map(lambda x, y: y)])
    return np.asarray(outputs), labels


def mcnemar(first_right, second_right):
    """McNemar's exact test of two classifiers answering the same items:
    ``(first only, second only, p)``, the numbers of items only the first (second) gets
    right, and the two-sided probability of a split of the disagreements at least this
    uneven were neither classifier better (binomial, 1/2)."""
    from scipy.stats import binomtest

    first_right = np.asarray(first_right, dtype=bool)
    second_right = np.asarray(second_right, dtype=bool)
    if first_right.shape != second_right.shape:
        raise ValueError(f"the two classifiers answered {first_right.shape} and "
                         f"{second_right.shape} items")
    first = int(np.sum(first_right & ~second_right))
    second = int(np.sum(second_right & ~first_right))
    p = binomtest(min(first, second), first + second, 0.5).pvalue if first + second else 1.0
    return first, second, float(p)


def classification_metrics(y_true, probs, class_names):
    """Accuracy, top-5 accuracy, macro precision / recall / F1, per-class accuracy,
    confusion matrix (rows: true class, columns: predicted), class names."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    y_pred = probs.argmax(axis=1)
    labels = np.arange(num_classes)
    k = min(5, num_classes)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    per_class = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=support > 0)
    top_k = (np.argsort(-probs, axis=1)[:, :k] == y_true[:, None]).any(axis=1).mean()
    return {
        "num_examples": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        f"top{k}_accuracy": float(top_k),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }
