"""Shared pieces of the similarity-matrix losses: views -> anchors, similarity, masks.

Shapes: ``B`` images, ``V`` views per image, ``D`` embedding width,
``N = B * V`` anchors.
"""

import keras
from keras import ops


def compute_dtype(x):
    """float64 inputs stay float64 (for reference tests); everything else is float32."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and keras.backend.standardize_dtype(dtype) == "float64":
        return "float64"
    return "float32"


def as_float_tensor(x):
    """``x`` as a float32 tensor, or float64 if it already is float64."""
    return ops.convert_to_tensor(x, dtype=compute_dtype(x))


def flatten_views(features, labels=None):
    """``[B, V, D]`` or ``[B, D]`` features -> ``([N, D], labels [N] or None, V)``.

    Anchors are ordered sample-major (image 0 view 0, image 0 view 1, ...), and
    each label is repeated once per view. Features are cast to float32 (float64
    stays float64): normalisation, statistics and gradients are computed in full
    precision under mixed precision.
    """
    features = as_float_tensor(features)
    rank = len(features.shape)
    if rank == 2:
        views = 1
    elif rank == 3:
        views = features.shape[1]
        if views is None:
            raise ValueError("The number of views (axis 1 of features) must be known.")
    else:
        raise ValueError(
            f"features must have shape [B, D] or [B, V, D]; got rank {rank} "
            f"(shape {features.shape})."
        )
    flat = ops.reshape(features, (-1, features.shape[-1]))
    if labels is not None:
        labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
        if views > 1:
            labels = ops.repeat(labels, views)
    return flat, labels, views


def l2_normalize(x, epsilon=1e-12):
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    sq = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq, ops.cast(epsilon, x.dtype)))


def cosine_similarity(z, temperature):
    """``normalise(z) @ normalise(z).T / temperature``, shape ``[N, N]``."""
    z = l2_normalize(z)
    return ops.matmul(z, ops.transpose(z)) / ops.cast(temperature, z.dtype)


def label_equality(labels, dtype):
    """``[N, N]`` matrix: 1 where ``labels[i] == labels[j]`` (diagonal included)."""
    labels = ops.reshape(labels, (-1, 1))
    return ops.cast(ops.equal(labels, ops.transpose(labels)), dtype)


def check_temperature(temperature):
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    return float(temperature)
