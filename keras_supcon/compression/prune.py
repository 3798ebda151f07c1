"""Magnitude pruning of a Keras 3 classifier with tfmot, through its tf_keras twin.

``prune_classifier`` is the whole path: twin -> wrap the chosen Conv2D / Dense
layers in ``prune_low_magnitude`` -> fine-tune with ``UpdatePruningStep`` ->
``strip_pruning`` -> back to a Keras 3 classifier. The helpers below are shared
by the lottery-ticket and layer-sensitivity methods: which layers are prunable,
magnitude masks, fixed masks during Keras 3 training, and measured sparsity.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_supcon.compression.twin import to_keras, to_tf_keras
from keras_supcon.errors import ConfigError
from keras_supcon.models.batchnorm import leaf_layers, precise_batchnorm

log = logging.getLogger(__name__)

PRUNABLE = ("Conv2D", "Dense")
SCHEDULES = ("constant", "polynomial")
LEGACY_KERAS = "TF_USE_LEGACY_KERAS"


def import_tfmot():
    """``tensorflow_model_optimization``, imported without changing the user's process.

    tfmot's import sets ``TF_USE_LEGACY_KERAS=1`` for the whole process and reads
    ``tf.keras`` under it, which from then on is Keras 2 (tf_keras) everywhere.
    Here ``tf.keras`` is resolved first, under the user's own setting, and the
    variable is put back as it was; tfmot keeps its own tf_keras module for the
    twin (it picks tf_keras itself when ``tf.keras`` is Keras 3).
    """
    if "tensorflow_model_optimization" in sys.modules:
        return sys.modules["tensorflow_model_optimization"]
    import tensorflow as tf

    tf.keras.layers  # noqa: B018 (any attribute resolves tf.keras's lazy loader, now)
    before = os.environ.get(LEGACY_KERAS)
    try:
        import tensorflow_model_optimization as tfmot
    finally:
        if before is None:
            os.environ.pop(LEGACY_KERAS, None)
        else:
            os.environ[LEGACY_KERAS] = before
    return tfmot


# --------------------------------------------------------------- which layers
def is_prunable(layer):
    """Conv2D / Dense (Keras 3 or tf_keras): the layers whose kernel we prune."""
    return any(cls.__name__ in PRUNABLE for cls in type(layer).__mro__)


def prunable_layers(model, *, layers=None, include_first_conv=False):
    """Names of the layers whose kernels are pruned, in graph order.

    Default: every Conv2D and Dense layer except the first convolution (which
    sees the raw image and has few weights). ``layers``: an explicit list of
    names instead; a name that is missing or not Conv2D / Dense is an error.
    """
    leaves = list(leaf_layers(model))
    if layers is not None:
        by_name = {layer.name: layer for layer in leaves}
        for name in layers:
            if name not in by_name:
                raise ConfigError(f"no layer named {name!r} in {model.name} "
                                  f"(prunable: {', '.join(prunable_layers(model)[:8])}, ...)")
            if not is_prunable(by_name[name]):
                raise ConfigError(f"layer {name!r} ({type(by_name[name]).__name__}) cannot be "
                                  f"pruned: only Conv2D and Dense kernels are")
        return [layer.name for layer in leaves if layer.name in set(layers)]
    names = [layer.name for layer in leaves if is_prunable(layer)]
    first_conv = next((layer.name for layer in leaves if is_prunable(layer)
                       and "Conv" in type(layer).__name__), None)
    if not include_first_conv and first_conv in names:
        names.remove(first_conv)
    if not names:
        raise ConfigError(f"{model.name} has no Conv2D or Dense layer to prune")
    return names


def kernels(model, names):
    """``{name: kernel variable}`` for the layers ``names``."""
    by_name = {layer.name: layer for layer in leaf_layers(model)}
    return {name: by_name[name].kernel for name in names}


def parse_m_by_n(text):
    """``"2:4"`` -> ``(2, 4)``: ``m`` zeros in every ``n`` consecutive weights."""
    if text is None:
        return None
    try:
        m, n = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--m-by-n must look like 2:4; got {text!r}") from None
    if not 0 < m < n:
        raise ConfigError(f"--m-by-n {m}:{n}: need 0 < m < n (m zeros in every n weights)")
    return m, n


def m_by_n_misfits(model, names, m_by_n):
    """``{layer: reason}`` for layers whose input channels are not a multiple of ``n``
    (tfmot groups ``n`` consecutive input-channel weights)."""
    if m_by_n is None:
        return {}
    n = m_by_n[1]
    out = {}
    for name, kernel in kernels(model, names).items():
        channels = int(kernel.shape[-2])
        if channels % n:
            out[name] = f"{channels} input channels are not a multiple of {n}"
    return out


# --------------------------------------------------------------- measurements
def sparsity_table(model, names):
    """Measured per-layer and total kernel sparsity of ``model``:
    ``{"layers": {name: {params, nonzero, sparsity}}, "total": {...}}``."""
    rows = {}
    for name, kernel in kernels(model, names).items():
        w = keras.ops.convert_to_numpy(kernel)
        rows[name] = _row(w.size, int(np.count_nonzero(w)))
    total = _row(sum(r["params"] for r in rows.values()),
                 sum(r["nonzero"] for r in rows.values()))
    every = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model_total = _row(sum(w.size for w in every), sum(int(np.count_nonzero(w)) for w in every))
    return {"layers": rows, "total": total, "model": model_total}


def _row(params, nonzero):
    return {"params": int(params), "nonzero": int(nonzero),
            "sparsity": float(1 - nonzero / params) if params else 0.0}


# --------------------------------------------------------------- tfmot path
def pruning_schedule(kind, sparsity, total_steps):
    """tfmot schedule reaching ``sparsity`` within the first 3/4 of ``total_steps``.

    The mask is updated every ``total_steps // 20`` steps (at least 1); the last
    quarter of fine-tuning runs with the final mask fixed, so the weights recover.
    ``constant``: the target from the first update; ``polynomial``: from 0 to the
    target along tfmot's cubic ``PolynomialDecay``.
    """
    tfmot = import_tfmot()

    if kind not in SCHEDULES:
        raise ConfigError(f"unknown schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
    frequency = max(1, total_steps // 20)
    end = max(frequency, int(0.75 * total_steps) // frequency * frequency)
    if kind == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(float(sparsity), begin_step=0,
                                                     end_step=end, frequency=frequency)
    return tfmot.sparsity.keras.PolynomialDecay(0.0, float(sparsity), begin_step=0,
                                                end_step=end, frequency=frequency)


def wrap_for_pruning(twin, layer_sparsity, schedule, total_steps, m_by_n=None):
    """Clone the tf_keras ``twin`` with ``prune_low_magnitude`` around each layer in
    ``layer_sparsity`` (``{name: target}``; others stay as they are, shared)."""
    tfmot = import_tfmot()
    import tf_keras

    def clone(layer):
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=clone)
        if layer.name not in layer_sparsity:
            return layer
        try:
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=pruning_schedule(schedule, layer_sparsity[layer.name],
                                                         total_steps),
                sparsity_m_by_n=m_by_n)
        except ValueError as exc:
            raise ConfigError(f"tfmot cannot prune layer {layer.name!r} "
                              f"({type(layer).__name__}): {exc}") from exc

    return tf_keras.models.clone_model(twin, clone_function=clone)


@dataclass
class PruneResult:
    model: object  # the pruned, stripped Keras 3 classifier
    layer_sparsity: dict  # target per pruned layer
    left_dense: dict = field(default_factory=dict)  # layer -> why it was not pruned
    history: dict = field(default_factory=dict)


def _layer_targets(classifier, sparsity, m_by_n, layer_sparsity, layers, include_first_conv):
    """``({layer: target sparsity}, {layer left dense: why})`` of a pruning call."""
    if layer_sparsity is None:
        check_sparsity(sparsity)
        names = prunable_layers(classifier, layers=layers, include_first_conv=include_first_conv)
        left_dense = m_by_n_misfits(classifier, names, m_by_n)
        for name, reason in left_dense.items():
            log.info("layer %s left dense: %s", name, reason)
        target = m_by_n[0] / m_by_n[1] if m_by_n else float(sparsity)
        layer_sparsity = {n: target for n in names if n not in left_dense}
        if not layer_sparsity:
            raise ConfigError(f"no layer fits the {m_by_n[0]}:{m_by_n[1]} pattern "
                              f"({'; '.join(f'{k}: {v}' for k, v in left_dense.items())})")
    else:
        left_dense = {}
        for name, value in layer_sparsity.items():
            check_sparsity(value)
        prunable_layers(classifier, layers=list(layer_sparsity))  # names must be prunable
        layer_sparsity = {n: float(s) for n, s in layer_sparsity.items() if s > 0}
    return layer_sparsity, left_dense


def _build_before_fit(model, label_spec):
    """tf_keras' side of :func:`keras_supcon.training.optim.build_before_fit`: the compiled
    optimizer's, loss's and metrics' variables created before ``fit`` traces its step
    (tf_keras creates them in the first trace, and the step is then traced twice), from
    one image of zeros of the model's input shape and labels like ``label_spec``."""
    import tensorflow as tf

    x = tf.zeros([1, *model.input_shape[1:]])
    y = tf.zeros([1, *label_spec.shape[1:]], label_spec.dtype)
    model.optimizer.build(model.trainable_variables)
    y_pred = model(x, training=False)
    model.compiled_loss.build(y_pred)
    model.compiled_metrics.build(y_pred, y)


def prune_classifier(classifier, train_ds, *, sparsity=0.5, schedule="constant", epochs=2,
                     steps_per_epoch=None, learning_rate=1e-4, m_by_n=None,
                     layer_sparsity=None, layers=None, include_first_conv=False,
                     val_ds=None, calibration_ds=None, verbose="auto"):
    """Prune a Keras 3 classifier to ``sparsity`` with tfmot and fine-tune it.

    ``train_ds`` / ``val_ds``: ``(images, labels)`` batches. ``m_by_n``: e.g.
    ``(2, 4)`` for structured sparsity (the sparsity is then ``m / n``; layers
    whose input channels do not fit are left dense and listed in ``left_dense``).
    ``layer_sparsity``: ``{layer: target}`` instead of one uniform target.
    Returns a :class:`PruneResult` whose ``model`` is a Keras 3 classifier with
    the pruning wrappers stripped (pruned weights are exact zeros) and BatchNorm
    statistics recomputed on ``calibration_ds`` (default ``train_ds``; pass
    ``False`` to keep the fine-tuning's moving averages).
    """
    tfmot = import_tfmot()
    import tf_keras

    if isinstance(m_by_n, str):
        m_by_n = parse_m_by_n(m_by_n)
    if epochs < 1:
        raise ConfigError(f"pruning needs >= 1 fine-tuning epoch; got {epochs}")
    if steps_per_epoch is None:
        steps_per_epoch = int(train_ds.cardinality())
        if steps_per_epoch < 1:
            raise ConfigError("the training dataset has no known length; pass steps_per_epoch")
    layer_sparsity, left_dense = _layer_targets(classifier, sparsity, m_by_n, layer_sparsity,
                                                layers, include_first_conv)
    total_steps = epochs * steps_per_epoch
    twin = to_tf_keras(classifier)
    pruned = wrap_for_pruning(twin, layer_sparsity, schedule, total_steps, m_by_n)
    pruned.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _build_before_fit(pruned, train_ds.element_spec[1])
    history = pruned.fit(train_ds, validation_data=val_ds, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, verbose=verbose,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model = to_keras(tfmot.sparsity.keras.strip_pruning(pruned))
    if calibration_ds is not False:
        # Pruning moves the weights under BatchNorm, and the moving averages of a short
        # fine-tuning still remember the dense network: measured on the CIFAR-10 subset
        # at 60% sparsity, test accuracy 0.44 before recalibration, 0.57 after
        # (docs/pruning.md).
        precise_batchnorm(model, train_ds if calibration_ds is None else calibration_ds)
    return PruneResult(model=model, layer_sparsity=layer_sparsity,
                       left_dense=left_dense,
                       history={k: [float(v) for v in vs] for k, vs in history.history.items()})


def check_sparsity(value):
    if not 0 <= float(value) < 1:
        raise ConfigError(f"sparsity must be in [0, 1); got {value}")
    return float(value)
