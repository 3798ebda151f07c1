"""Embedding-quality metrics against plain-loop float64 references written from
their definitions (kNN vote, silhouette, Precision@1, Recall@K, MAP@R)."""

import math

import numpy as np
import pytest

from keras_supcon.evaluation.embedding import (
    embedding_metrics,
    knn_accuracy,
    knn_predict,
    retrieval_metrics,
    silhouette,
)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) *
                                                        sum(y * y for y in b))


def ref_knn_predict(index, index_labels, queries, k):
    preds = []
    for q in queries:
        sims = sorted(((_cos(q, x), int(lab)) for x, lab in zip(index, index_labels)),
                      reverse=True)[:k]
        votes, summed = {}, {}
        for s, lab in sims:
            votes[lab] = votes.get(lab, 0) + 1
            summed[lab] = summed.get(lab, 0.0) + s
        best = max(votes.values())
        preds.append(max((c for c in votes if votes[c] == best), key=lambda c: summed[c]))
    return preds


def ref_knn(index, index_labels, queries, query_labels, k):
    preds = ref_knn_predict(index, index_labels, queries, k)
    return sum(p == int(ql) for p, ql in zip(preds, query_labels)) / len(queries)


def ref_silhouette(x, labels):
    n, scores = len(x), []
    for i in range(n):
        same = [1 - _cos(x[i], x[j]) for j in range(n) if j != i and labels[j] == labels[i]]
        if not same:
            scores.append(0.0)  # singleton cluster (Rousseeuw's convention)
            continue
        a = sum(same) / len(same)
        b = min(sum(1 - _cos(x[i], x[j]) for j in range(n) if labels[j] == c) /
                sum(1 for j in range(n) if labels[j] == c)
                for c in set(labels) if c != labels[i])
        scores.append((b - a) / max(a, b))
    return sum(scores) / n


def ref_retrieval(x, labels, recall_at):
    n = len(x)
    p1, recall, aps = 0, {k: 0 for k in recall_at}, []
    for i in range(n):
        ranked = sorted((j for j in range(n) if j != i), key=lambda j: -_cos(x[i], x[j]))
        rel = [labels[j] == labels[i] for j in ranked]
        p1 += rel[0]
        for k in recall_at:
            recall[k] += any(rel[:k])
        r = sum(1 for j in range(n) if j != i and labels[j] == labels[i])
        if r:
            hits, total = 0, 0.0
            for pos in range(r):
                if rel[pos]:
                    hits += 1
                    total += hits / (pos + 1)
            aps.append(total / r)
    return p1 / n, {k: v / n for k, v in recall.items()}, sum(aps) / len(aps)


def _data(seed, n, dim, num_classes, spread, centers_seed=None):
    """Points around class centres (``centers_seed``: share the centres of another draw)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    centers = np.random.default_rng(seed if centers_seed is None else centers_seed).normal(
        size=(num_classes, dim))
    return centers[labels] + spread * rng.normal(size=(n, dim)), labels


CASES = [  # seed, n, dim, classes, spread (noise around class centres)
    (0, 40, 8, 3, 1.0),
    (1, 57, 16, 5, 2.0),
    (2, 30, 3, 2, 0.3),
    (3, 25, 4, 10, 5.0),  # many classes, some with 0 or 1 member
]


@pytest.mark.parametrize("seed,n,dim,classes,spread", CASES)
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_reference(seed, n, dim, classes, spread, k):
    index, index_labels = _data(seed, n, dim, classes, spread)
    queries, query_labels = _data(seed + 100, n // 2, dim, classes, spread, centers_seed=seed)
    got = knn_accuracy(index, index_labels, queries, query_labels, k=k)
    assert got == pytest.approx(ref_knn(index.tolist(), index_labels, queries.tolist(),
                                        query_labels, k), abs=1e-12)
    preds = knn_predict(index, index_labels, queries, k=k)
    assert preds.tolist() == ref_knn_predict(index.tolist(), index_labels, queries.tolist(), k)


def test_knn_tie_goes_to_closer_class():
    index = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 1, 2, 3])
    # k = 2: one vote each for classes 0 and 2 (the two nearest); 0 is closer.
    assert knn_accuracy(index, labels, [[1.0, 0.05]], [0], k=2) == 1.0
    assert knn_accuracy(index, labels, [[1.0, 0.05]], [2], k=2) == 0.0


@pytest.mark.parametrize("seed,n,dim,classes,spread", CASES)
def test_silhouette_matches_reference(seed, n, dim, classes, spread):
    x, labels = _data(seed, n, dim, classes, spread)
    assert silhouette(x, labels) == pytest.approx(ref_silhouette(x.tolist(), labels.tolist()),
                                                  abs=1e-9)


def test_silhouette_single_class_is_nan():
    assert math.isnan(silhouette(np.ones((5, 3)) + np.arange(5)[:, None], np.zeros(5)))


@pytest.mark.parametrize("seed,n,dim,classes,spread", CASES)
def test_retrieval_matches_reference(seed, n, dim, classes, spread):
    x, labels = _data(seed, n, dim, classes, spread)
    got = retrieval_metrics(x, labels, recall_at=(1, 2, 4, 8))
    p1, recall, map_r = ref_retrieval(x.tolist(), labels.tolist(), (1, 2, 4, 8))
    assert got["precision_at_1"] == pytest.approx(p1, abs=1e-12)
    assert got["recall_at_k"] == pytest.approx({str(k): v for k, v in recall.items()}, abs=1e-12)
    assert got["map_at_r"] == pytest.approx(map_r, abs=1e-12)


def test_retrieval_blocks_agree_with_one_block(monkeypatch):
    import keras_supcon.evaluation.embedding as emb

    x, labels = _data(5, 300, 6, 4, 1.5)
    whole = retrieval_metrics(x, labels)
    monkeypatch.setattr(emb, "_BLOCK", 7)
    blocked = retrieval_metrics(x, labels)
    assert blocked.pop("recall_at_k") == pytest.approx(whole.pop("recall_at_k"))
    assert blocked == pytest.approx(whole)
    index, index_labels = _data(6, 200, 6, 4, 1.5)
    monkeypatch.setattr(emb, "_BLOCK", 512)
    one = knn_accuracy(index, index_labels, x, labels, k=5)
    monkeypatch.setattr(emb, "_BLOCK", 13)
    assert knn_accuracy(index, index_labels, x, labels, k=5) == one


def test_perfect_clusters_score_one_and_scale_does_not_matter():
    labels = np.repeat(np.arange(3), 5)
    x = np.eye(3)[labels] * np.linspace(0.5, 4, 15)[:, None]  # same direction per class
    m = embedding_metrics(x, labels, x, labels, k=3)
    assert m["knn_accuracy"] == 1.0 and m["precision_at_1"] == 1.0 and m["map_at_r"] == 1.0
    assert m["recall_at_k"] == {"1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
    assert m["silhouette"] == pytest.approx(1.0)
    assert m["dim"] == 3 and m["knn_k"] == 3


def test_embedding_metrics_pair_the_classifier_with_the_knn_vote():
    index, index_labels = _data(7, 60, 5, 3, 1.0)
    queries, labels = _data(8, 40, 5, 3, 1.0, centers_seed=7)
    knn_pred = np.array(ref_knn_predict(index.tolist(), index_labels, queries.tolist(), 5))
    predictions = labels.copy()  # right everywhere but on the first 6 queries
    predictions[:6] = (labels[:6] + 1) % 3
    block = embedding_metrics(index, index_labels, queries, labels, k=5,
                              predictions=predictions)
    clf_right, knn_right = predictions == labels, knn_pred == labels
    assert block["classifier_vs_knn"]["classifier_only"] == int(np.sum(clf_right & ~knn_right))
    assert block["classifier_vs_knn"]["knn_only"] == int(np.sum(knn_right & ~clf_right))
    assert block["knn_accuracy"] == knn_right.mean()
    assert "classifier_vs_knn" not in embedding_metrics(index, index_labels, queries, labels, k=5)
