"""Export (and, later, pruning and quantisation) of trained classifiers."""

from keras_supcon.compression.export import check_saved_model, export_saved_model, serve_saved_model

__all__ = ["export_saved_model", "serve_saved_model", "check_saved_model"]
