"""Magnitude masks (NumPy) and fixed masks on a Keras 3 model's kernels: the pruning of
the lottery ticket and of the sensitivity scan, without tfmot."""

import contextlib

import keras
import numpy as np

from keras_supcon.compression.prune import kernels
from keras_supcon.errors import ConfigError


def magnitude_masks(weights, sparsity, *, scope="layer"):
    """Keep-masks pruning the smallest-magnitude weights.

    ``weights``: ``{name: array}``; ``sparsity``: a float, or ``{name: float}``
    (``scope="layer"`` only); ``scope``: "layer" (each layer to its sparsity) or
    "global" (one magnitude threshold across all layers). Exactly
    ``round(sparsity * size)`` weights are pruned (ties broken by position).
    """
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global'; got {scope!r}")
    if scope == "global":
        if isinstance(sparsity, dict):
            raise ConfigError("global magnitude pruning takes one sparsity, not one per layer")
        names = list(weights)
        flat = np.concatenate([np.abs(np.ravel(weights[n])) for n in names])
        keep = _keep_largest(flat, sparsity)
        out, start = {}, 0
        for n in names:
            size = np.size(weights[n])
            out[n] = keep[start:start + size].reshape(np.shape(weights[n]))
            start += size
        return out
    return {n: _keep_largest(np.abs(np.ravel(w)),
                             sparsity[n] if isinstance(sparsity, dict) else sparsity
                             ).reshape(np.shape(w))
            for n, w in weights.items()}


def _keep_largest(abs_values, sparsity):
    pruned = int(round(float(sparsity) * abs_values.size))
    keep = np.ones(abs_values.size, bool)
    keep[np.argsort(abs_values, kind="stable")[:pruned]] = False
    return keep


class FixedMask(keras.constraints.Constraint):
    """Multiplies a weight by a fixed 0/1 mask after every optimizer step."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, w):
        return w * keras.ops.cast(self.mask, w.dtype)


@contextlib.contextmanager
def fixed_masks(model, masks):
    """Apply keep-masks ``{layer: bool array}`` to ``model``'s kernels and keep the
    pruned weights at zero through every optimizer step inside the block."""
    variables = kernels(model, list(masks))
    saved = {}
    for name, var in variables.items():
        saved[name] = var.constraint
        var.constraint = FixedMask(np.asarray(masks[name], dtype="float32"))
        var.assign(var.constraint(var))
    try:
        yield model
    finally:
        for name, var in variables.items():
            var.constraint = saved[name]
