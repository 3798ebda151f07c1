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

import weakref

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

    The passes run compiled (:func:`_batch_statistics`: ``tf.function`` on TensorFlow,
    ``jax.jit`` on JAX, compiled once per model and reused by later calls): eagerly,
    DenseNet-201's pass at 32x32, batch 64, took 1.31 s against 0.18 s compiled, and the
    training jobs recompute the statistics before every validation pass.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    # NumPy copies: the variables may be sharded (keras.distribution on JAX).
    before = [(_numpy(layer.moving_mean), _numpy(layer.moving_variance)) for layer in layers]
    sums = [(np.zeros(mean.shape, "float64"), np.zeros(var.shape, "float64"))
            for mean, var in before]
    n, finished = 0, False
    try:
        for layer in layers:
            layer.momentum = 0.0  # the moving statistics become those of the last batch
            layer.trainable = True
        statistics = _batch_statistics(model, layers)
        for item in batches:
            if max_batches is not None and n >= max_batches:
                break
            x = item[0] if isinstance(item, (tuple, list)) else item
            for (mean_sum, var_sum), (mean, var) in zip(sums, statistics(x)):
                mean_sum += mean
                var_sum += var
            n += 1
        finished = n > 0
    finally:  # the average, or (no batch, an error) the statistics from before
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum = momentum
            layer.trainable = trainable
        results = [(m / n, v / n) for m, v in sums] if finished else before
        for layer, (mean, var), (old_mean, old_var) in zip(layers, results, before):
            layer.moving_mean.assign(mean.astype(old_mean.dtype))
            layer.moving_variance.assign(var.astype(old_var.dtype))
    if n == 0:
        raise ValueError("precise BatchNorm needs at least one batch; got none")
    return n


def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(getattr(variable, "value", variable)))


# model -> (signature, compiled pass); an entry goes with its model
_COMPILED = weakref.WeakKeyDictionary()


def _batch_statistics(model, layers):
    """``f(x)`` -> ``[(batch mean, batch variance)]`` of each of ``layers`` (NumPy), from one
    forward pass of ``model`` in training mode, the layers' momentum being 0 (each pass
    leaves its batch's statistics in the moving ones). Compiled on TensorFlow (Keras 3 and
    tf_keras models) and JAX, and kept for the next call while the model's variables are
    split the same way; eager on other backends."""
    is_keras3 = isinstance(model, keras.Model)
    backend = keras.backend.backend() if is_keras3 else "tensorflow"
    if backend == "jax":
        return _jax_statistics(model, layers)
    if backend != "tensorflow":
        def eager(x):
            model(x, training=True)
            return [(_numpy(layer.moving_mean), _numpy(layer.moving_variance))
                    for layer in layers]
        return eager

    def compile_pass():
        import tensorflow as tf

        def read(variable):
            return tf.identity(variable.value if is_keras3 else variable)

        @tf.function(autograph=False, reduce_retracing=True)
        def forward(x):
            model(x, training=True)
            return [(read(layer.moving_mean), read(layer.moving_variance)) for layer in layers]
        return forward

    forward = _compiled(model, ("tensorflow", tuple(id(layer) for layer in layers)),
                        compile_pass)
    return lambda x: [(m.numpy(), v.numpy()) for m, v in forward(x)]


def _compiled(model, signature, compile_pass):
    """The pass kept for ``model`` if it was compiled for the same ``signature``, else a new
    one from ``compile_pass()`` (kept in its place)."""
    cached = _COMPILED.get(model)
    if cached is None or cached[0] != signature:
        cached = _COMPILED[model] = (signature, compile_pass())
    return cached[1]


def _jax_statistics(model, layers):
    """:func:`_batch_statistics` on JAX: ``model.stateless_call`` under ``jax.jit``."""
    import jax

    trainable, non_trainable = model.trainable_variables, model.non_trainable_variables
    index = {id(v): i for i, v in enumerate(non_trainable)}
    picks = tuple((index[id(layer.moving_mean)], index[id(layer.moving_variance)])
                  for layer in layers)

    def step(trainable_values, non_trainable_values, x):
        _, updated = model.stateless_call(trainable_values, non_trainable_values, x,
                                          training=True)
        return [(updated[i], updated[j]) for i, j in picks]

    forward = _compiled(model, ("jax", len(trainable), len(non_trainable), picks),
                        lambda: jax.jit(step))

    def statistics(x):
        x = keras.tree.map_structure(np.asarray, x)  # e.g. tf.data's tensors
        out = forward([v.value for v in trainable], [v.value for v in non_trainable], x)
        return [(np.asarray(m), np.asarray(v)) for m, v in out]
    return statistics
