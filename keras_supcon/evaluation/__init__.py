"""Metrics, embeddings and figures."""

from keras_supcon.evaluation.embedding import (
    embedding_metrics,
    knn_accuracy,
    knn_predict,
    retrieval_metrics,
    silhouette,
)
from keras_supcon.evaluation.figures import plot_confusion, plot_curves, plot_tsne, tsne_embedding
from keras_supcon.evaluation.metrics import classification_metrics, predict

__all__ = ["classification_metrics", "predict", "plot_curves", "plot_tsne", "plot_confusion",
           "tsne_embedding", "embedding_metrics", "knn_accuracy", "knn_predict",
           "retrieval_metrics",
           "silhouette"]
