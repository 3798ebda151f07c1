"""The npairs loss of the Keras supervised-contrastive tutorial.

``npairs_loss`` reproduces ``tfa.losses.npairs_loss`` (TensorFlow Addons,
retired): for a ``[B]`` label vector and a ``[B, B]`` similarity matrix ``S``,
the targets are the label-equality matrix (diagonal included) with each row
divided by its sum, and the loss is the mean over rows of the softmax
cross-entropy of ``S[i]`` against target row ``i``::

    L = 1/B sum_i sum_j -Y_ij log softmax(S_i)_j,   Y_ij = [y_i = y_j] / #{k: y_k = y_i}
"""

import keras
from keras import ops

from keras_supcon.losses.kernel import batch_softmax_loss
from keras_supcon.losses.similarity import (
    as_float_tensor,
    check_temperature,
    flatten_views,
    label_equality,
)


def npairs_loss(labels, similarity):
    """``tfa.losses.npairs_loss``: labels ``[B]`` (ints), similarity ``[B, B]`` logits."""
    similarity = as_float_tensor(similarity)
    targets = label_equality(ops.reshape(labels, (-1,)), similarity.dtype)
    targets = targets / ops.sum(targets, axis=1, keepdims=True)
    log_probs = ops.log_softmax(similarity, axis=1)
    return ops.mean(-ops.sum(targets * log_probs, axis=1))


@keras.saving.register_keras_serializable(package="keras_supcon")
class NPairsLoss(keras.losses.Loss):
    """The tutorial's ``SupervisedContrastiveLoss``: ``npairs_loss`` on
    ``normalise(z) @ normalise(z).T / temperature``.

    ``y_pred`` are ``[B, D]`` embeddings, or ``[B, V, D]`` (views are flattened
    into ``B * V`` anchors, each with its image's label); ``y_true`` the ``[B]`` labels.
    Computed by the blocked kernel of :mod:`~keras_supcon.losses.kernel` (equal
    to ``npairs_loss(labels, cosine_similarity(z, T))``, without the ``[B, B]``
    matrices); on several ``tf.distribute`` replicas, over the global batch.
    """

    def __init__(self, temperature=0.05, name="npairs_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_temperature(temperature)

    def call(self, y_true, y_pred):
        z, labels, _ = flatten_views(y_pred, y_true)
        return batch_softmax_loss(z, labels, temperature=self.temperature, mode="npairs")

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
