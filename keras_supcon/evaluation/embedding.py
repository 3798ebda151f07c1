"""Embedding quality beyond linear accuracy: kNN accuracy, silhouette, retrieval.

All of it on L2-normalised embeddings with cosine similarity, so CE-trained and
contrastive encoders are measured in the same space. Similarities are computed
in blocks of queries, so memory stays at ``block x index`` floats.

- kNN accuracy: each test embedding (query) takes the majority label of its
  ``k`` most similar training embeddings (the index); a tie goes to the tied
  class whose neighbours have the larger summed similarity.
- Silhouette score (cosine distance) of the test embeddings under their true labels.
- Retrieval on the test set (each test item queries all the others):
  Precision@1; Recall@K, the fraction of queries with at least one item of
  their class among the K nearest (as in metric-learning papers, Song et al. 2016);
  MAP@R (Musgrave et al. 2020): with R the number of other items of the query's
  class, ``MAP@R = 1/R * sum_{i<=R} P(i) * rel(i)``, averaged over queries.
"""

import numpy as np

from keras_supcon.evaluation.metrics import mcnemar

RECALL_AT = (1, 2, 4, 8)
KNN_K = 20
_BLOCK = 512


def l2_normalize(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _blocks(n, size=_BLOCK):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def knn_predict(index_emb, index_labels, query_emb, k=KNN_K, num_classes=None):
    """Labels of a ``k``-nearest-neighbour majority vote (cosine similarity), one per
    query; a tie goes to the tied class whose neighbours have the larger summed
    similarity."""
    index_emb, query_emb = l2_normalize(index_emb), l2_normalize(query_emb)
    index_labels = np.asarray(index_labels).astype(int)
    k = min(k, len(index_emb))
    num_classes = num_classes or int(index_labels.max()) + 1
    preds = []
    for rows in _blocks(len(query_emb)):
        sim = query_emb[rows] @ index_emb.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        votes = np.zeros((len(top), num_classes))
        sims = np.zeros((len(top), num_classes))
        r = np.arange(len(top))[:, None]
        np.add.at(votes, (r, index_labels[top]), 1)
        np.add.at(sims, (r, index_labels[top]), top_sim)
        best = votes.max(axis=1, keepdims=True)
        preds.append(np.where(votes == best, sims, -np.inf).argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, dtype=int)


def knn_accuracy(index_emb, index_labels, query_emb, query_labels, k=KNN_K):
    """Accuracy of :func:`knn_predict` on queries labelled ``query_labels``."""
    query_labels = np.asarray(query_labels).astype(int)
    pred = knn_predict(index_emb, index_labels, query_emb, k)
    return int((pred == query_labels).sum()) / len(query_labels)


def silhouette(embeddings, labels):
    """Mean silhouette coefficient with cosine distance (needs >= 2 classes)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(l2_normalize(embeddings), labels, metric="cosine"))


def retrieval_metrics(embeddings, labels, recall_at=RECALL_AT):
    """Precision@1, Recall@K and MAP@R with every item querying all the others."""
    emb = l2_normalize(embeddings)
    labels = np.asarray(labels).astype(int)
    n = len(emb)
    counts = np.bincount(labels)
    recall_hits = {k: 0 for k in recall_at}
    p_at_1, map_sum, map_queries = 0, 0.0, 0
    depth = min(n - 1, max(max(recall_at), int(counts.max()) - 1))
    for rows in _blocks(n):
        sim = emb[rows] @ emb.T
        sim[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable")[:, :depth]
        rel = labels[order] == labels[rows][:, None]  # [block, depth]
        p_at_1 += int(rel[:, 0].sum())
        for k in recall_at:
            recall_hits[k] += int(rel[:, :k].any(axis=1).sum())
        r = counts[labels[rows]] - 1  # other items of the query's class
        ranks = np.arange(1, depth + 1)
        precision_at_i = np.cumsum(rel, axis=1) / ranks
        within_r = ranks[None, :] <= r[:, None]
        ap = (precision_at_i * rel * within_r).sum(axis=1)
        has = r > 0
        map_sum += float((ap[has] / r[has]).sum())
        map_queries += int(has.sum())
    return {
        "precision_at_1": p_at_1 / n,
        "recall_at_k": {str(k): recall_hits[k] / n for k in recall_at},
        "map_at_r": map_sum / map_queries if map_queries else float("nan"),
    }


def embedding_metrics(train_emb, train_labels, test_emb, test_labels, *, k=KNN_K,
                      predictions=None):
    """The ``embedding`` block of ``metrics.json``: kNN (train index, test queries),
    silhouette and retrieval on the test set. With ``predictions`` (the classifier's
    labels of the test items), ``classifier_vs_knn``: the classifier against the kNN vote
    item by item (:func:`~keras_supcon.evaluation.metrics.mcnemar`)."""
    test_labels = np.asarray(test_labels).astype(int)
    knn_right = knn_predict(train_emb, train_labels, test_emb, k) == test_labels
    block = {
        "space": "encoder output, L2-normalised, cosine similarity",
        "dim": int(np.asarray(test_emb).shape[1]),
        "knn_k": int(min(k, len(train_emb))),
        "knn_accuracy": float(knn_right.mean()),
        "silhouette": silhouette(test_emb, test_labels),
        **retrieval_metrics(test_emb, test_labels),
    }
    if predictions is not None:
        clf, knn, p = mcnemar(np.asarray(predictions) == test_labels, knn_right)
        block["classifier_vs_knn"] = {"classifier_only": clf, "knn_only": knn, "mcnemar_p": p}
    return block
