"""Pruning (tfmot through a tf_keras twin), lottery tickets, layer sensitivity,
TFLite quantisation, compression reports and SavedModel export.

The whole job (``PruneConfig``, ``prune_run``) lives in ``keras_supcon.compression.run``
and is exported by ``keras_supcon`` (importing it here would be circular: training
exports its models through this package)."""

from keras_supcon.compression.prune import PruneResult, prune_classifier, sparsity_table
from keras_supcon.compression.twin import to_keras, to_tf_keras
from keras_supcon.runs.export import check_saved_model, export_saved_model, serve_saved_model

__all__ = ["export_saved_model", "serve_saved_model", "check_saved_model", "prune_classifier",
           "PruneResult", "sparsity_table", "to_keras",
           "to_tf_keras"]
