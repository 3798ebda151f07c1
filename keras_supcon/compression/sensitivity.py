"""Layer-sensitive pruning: measure how much each layer can lose, then allocate.

1. Sensitivity: for each prunable layer alone, prune its smallest-magnitude
   weights at several rates (no fine-tuning) and measure the validation
   accuracy drop.
2. Allocation: choose per-layer sparsities reaching the global target (fraction
   of all prunable weights) with the least predicted accuracy loss, assuming
   the layers' drops add up. Greedy on the piecewise-linear drop curves: keep
   raising the layer whose next step costs the least accuracy per pruned
   weight, until the target is met (the last step is cut to land on it).
3. The per-layer targets go to tfmot as one schedule per layer
   (:func:`~keras_supcon.compression.prune.prune_classifier` with ``layer_sparsity``).
"""

import keras
import numpy as np

from keras_supcon.compression.masks import magnitude_masks
from keras_supcon.compression.prune import kernels
from keras_supcon.errors import ConfigError
from keras_supcon.evaluation import predict

DEFAULT_RATES = (0.25, 0.5, 0.75, 0.9)


def accuracy(model, ds):
    probs, labels = predict(model, ds)
    return float((probs.argmax(axis=1) == labels).mean())


def layer_sensitivity(model, names, val_ds, rates=DEFAULT_RATES):
    """``(base_accuracy, {layer: [accuracy drop at each rate]})`` on ``val_ds``."""
    base = accuracy(model, val_ds)
    drops = {}
    for name, var in kernels(model, names).items():
        original = keras.ops.convert_to_numpy(var)
        drops[name] = []
        try:
            for rate in rates:
                mask = magnitude_masks({name: original}, rate)[name]
                var.assign(original * mask)
                drops[name].append(base - accuracy(model, val_ds))
        finally:
            var.assign(original)
    return base, drops


def allocate_sparsity(drops, sizes, target, rates=DEFAULT_RATES):
    """Per-layer sparsities whose weighted mean over ``sizes`` is ``target``.

    ``drops``: ``{layer: [drop at each rate]}``; ``sizes``: ``{layer: weights}``.
    A layer's drop curve starts at 0 for rate 0, is made non-decreasing and is
    linear between measured rates; no layer goes past the largest rate.
    """
    levels = np.array([0.0] + list(rates))
    if not 0 <= target <= levels[-1]:
        raise ConfigError(f"target sparsity {target} is above the largest measured rate "
                          f"{levels[-1]}; add a higher rate")
    curves = {n: np.maximum.accumulate(np.array([0.0] + list(d))) for n, d in drops.items()}
    level = {n: 0 for n in drops}
    sparsity = {n: 0.0 for n in drops}
    total = float(sum(sizes.values()))
    needed = target * total
    pruned = 0.0
    while pruned < needed - 1e-9:
        best, best_cost = None, None
        for n in drops:
            i = level[n]
            if i + 1 >= len(levels):
                continue
            cost = (curves[n][i + 1] - curves[n][i]) / ((levels[i + 1] - levels[i]) * sizes[n])
            if best is None or cost < best_cost or (cost == best_cost and sizes[n] > sizes[best]):
                best, best_cost = n, cost
        i = level[best]
        step = (levels[i + 1] - levels[i]) * sizes[best]
        if pruned + step > needed:  # land exactly on the target
            sparsity[best] = levels[i] + (needed - pruned) / sizes[best]
            pruned = needed
        else:
            level[best] = i + 1
            sparsity[best] = float(levels[i + 1])
            pruned += step
    return sparsity


def predicted_drop(drops, sparsity, rates=DEFAULT_RATES):
    """Sum over layers of the interpolated drop at each layer's sparsity."""
    levels = np.array([0.0] + list(rates))
    return float(sum(np.interp(sparsity[n], levels,
                               np.maximum.accumulate(np.array([0.0] + list(d))))
                     for n, d in drops.items()))
