"""Barlow Twins loss (Zbontar et al. 2021).

Each view's ``[N, D]`` embeddings are standardised along the batch
(``BatchNorm1d(affine=False)`` in training mode, as in the official code:
mean 0, biased variance + ``epsilon``), then with the ``[D, D]``
cross-correlation ``C = z_a_n.T @ z_b_n / N``::

    L = sum_i (1 - C_ii)^2 + lambda_ sum_{i != j} C_ij^2

On several ``tf.distribute`` replicas the batch statistics and ``C`` are those
of the global batch, as in the official implementation (``SyncBatchNorm``, then
an all-reduce of ``C``): each replica all-reduces its column sums, its sums of
squared deviations and its ``[D, D]`` part of ``C``
(:meth:`~keras_supcon.losses.replicas.Replicas.sum`), so no embeddings are
gathered; every replica then holds the global loss and returns ``L / replicas``.
"""

import keras
from keras import ops

from keras_supcon.losses.replicas import current_replicas
from keras_supcon.losses.similarity import compute_dtype

TWO_VIEWS = "Barlow Twins needs exactly two views per image (features [B, 2, D]); got "


def _check(lambda_, epsilon):
    if not float(lambda_) >= 0:
        raise ValueError(f"lambda_ must be >= 0; got {lambda_}.")
    if not float(epsilon) >= 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}.")
    return float(lambda_), float(epsilon)


def _standardise(z, epsilon, replicas, n):
    """``z`` standardised with the mean and biased variance of the global batch of ``n`` rows."""
    mean = replicas.sum(ops.sum(z, axis=0, keepdims=True)) / n
    centred = z - mean
    variance = replicas.sum(ops.sum(ops.square(centred), axis=0, keepdims=True)) / n
    return centred * ops.rsqrt(variance + epsilon)


def barlow_twins_loss(z_a, z_b, *, lambda_=5e-3, epsilon=1e-5):
    """Barlow Twins loss of two ``[N, D]`` views (``N >= 2``). Returns a scalar
    (on ``R`` replicas, each returns ``1 / R`` of the global batch's loss).

    Computed in float32, or float64 if either view is float64.
    """
    lambda_, epsilon = _check(lambda_, epsilon)
    dtype = "float64" if "float64" in (compute_dtype(z_a), compute_dtype(z_b)) else "float32"
    z_a, z_b = ops.convert_to_tensor(z_a, dtype), ops.convert_to_tensor(z_b, dtype)
    if len(z_a.shape) != 2 or len(z_b.shape) != 2:
        raise ValueError(f"z_a and z_b must be [N, D]; got shapes {z_a.shape} and {z_b.shape}.")
    if z_a.shape[0] is not None and z_a.shape[0] < 2:
        raise ValueError(f"Barlow Twins needs a batch of at least 2; got {z_a.shape[0]}.")
    replicas = current_replicas()
    n = ops.cast(ops.shape(z_a)[0] * replicas.count, dtype)
    a_n = _standardise(z_a, epsilon, replicas, n)
    b_n = _standardise(z_b, epsilon, replicas, n)
    c = replicas.sum(ops.matmul(ops.transpose(a_n), b_n)) / n
    on_diag = ops.diagonal(c)
    off_diag = ops.sum(ops.square(c) * (1.0 - ops.eye(ops.shape(c)[0], dtype=dtype)))
    loss = ops.sum(ops.square(1.0 - on_diag)) + lambda_ * off_diag
    return loss / replicas.count


@keras.saving.register_keras_serializable(package="keras_supcon")
class BarlowTwinsLoss(keras.losses.Loss):
    """:func:`barlow_twins_loss` as a Keras loss: ``y_pred`` the ``[B, 2, D]``
    embeddings of the two views, ``y_true`` ignored (pass anything, e.g. the labels)."""

    def __init__(self, lambda_=5e-3, epsilon=1e-5, name="barlow_twins_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lambda_, self.epsilon = _check(lambda_, epsilon)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 2:
            raise ValueError(f"{TWO_VIEWS}shape {tuple(y_pred.shape)}.")
        return barlow_twins_loss(y_pred[:, 0], y_pred[:, 1], lambda_=self.lambda_,
                                 epsilon=self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(lambda_=self.lambda_, epsilon=self.epsilon)
        return config
