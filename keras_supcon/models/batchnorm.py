"""BatchNorm statistics for short runs: the momentum of the moving averages, and
"precise BN" (pycls, Detectron2): moving statistics recomputed after training.

Keras' default momentum, 0.99, averages over ~100 steps: right for ImageNet-length
runs, but after a few hundred steps of a short run the moving mean / variance
still lag far behind the weights, and everything evaluated in inference mode
(validation, the frozen-encoder probe, embeddings, test metrics, the exported
model) runs on stale statistics. :func:`set_batchnorm_momentum` sets every layer's
momentum (PyTorch's default, 0.1 there, is 0.9 here); :func:`precise_batchnorm`
replaces the moving statistics by the average of the batch statistics over clean
training batches, with forward passes only.
"""

import keras
import numpy as np


def leaf_layers(model):
    """Every layer of ``model``, nested models expanded, in graph order."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from leaf_layers(layer)
        else:
            yield layer


def batchnorm_layers(model):
    """The BatchNormalization layers of ``model`` (Keras 3 or tf_keras), nested ones too."""
    return [layer for layer in leaf_layers(model)
            if any(cls.__name__ == "BatchNormalization" for cls in type(layer).__mro__)]


def set_batchnorm_momentum(model, momentum):
    """Set the moving-average momentum of every BatchNorm layer of ``model``
    (``keras.applications`` backbones included); returns ``model``. The momentum is
    part of each layer's config, so a saved model keeps it."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"BatchNorm momentum must be in [0, 1); got {momentum}")
    for layer in batchnorm_layers(model):
        layer.momentum = float(momentum)
    return model


def precise_batchnorm(model, batches, *, max_batches=None):
    """Recompute every BatchNorm layer's moving mean / variance as the plain
    average of its batch statistics over ``batches`` (forward passes in training
    mode; no weight changes). Returns the number of batches used.

    ``batches``: an iterable of inputs of ``model``, or of ``(inputs, labels)``
    pairs (e.g. a ``tf.data`` pipeline of clean, un-augmented training images).
    Works on frozen models too: each BatchNorm layer is made trainable for the
    passes (a frozen BatchNorm layer ignores ``training=True``) and restored after.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    # NumPy copies: the variables may be sharded (keras.distribution on JAX).
    before = [(np.array(keras.ops.convert_to_numpy(layer.moving_mean.value)),
               np.array(keras.ops.convert_to_numpy(layer.moving_variance.value)))
              for layer in layers]
    for layer, (mean, variance) in zip(layers, before):
        layer.moving_mean.assign(np.zeros_like(mean))
        layer.moving_variance.assign(np.ones_like(variance))
        layer.trainable = True
    n = 0
    try:
        for item in batches:
            if max_batches is not None and n >= max_batches:
                break
            x = item[0] if isinstance(item, (tuple, list)) else item
            n += 1
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / n  # running mean over batches
            model(x, training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum = momentum
            layer.trainable = trainable
    if n == 0:
        for layer, (mean, variance) in zip(layers, before):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise ValueError("precise BatchNorm needs at least one batch; got none")
    return n
