"""Probes on a frozen encoder, fitted to convergence on cached features.

Frozen features do not change: they are extracted once (after the encoder's
BatchNorm statistics are made precise) and standardised.

- linear probe: a multinomial logistic regression fitted by L-BFGS for each L2
  strength of a grid; the strength with the best validation accuracy is kept (the
  linear-probe protocol of Radford et al. 2021, "CLIP");
- nn probe: the classifier's hidden ReLU layer and softmax trained with Adam on
  the cached features, the best validation epoch kept.

The fitted weights, with the standardisation folded into the first layer, are
written into the Keras classifier that is saved and exported.
"""

import logging

import keras
import numpy as np
import tensorflow as tf

from keras_supcon.data.pipeline import resize_images
from keras_supcon.runs.callbacks import BestEpoch
from keras_supcon.training.optim import build_before_fit

log = logging.getLogger(__name__)

# Inverse L2 strengths C tried (scikit-learn: C x sum of losses + ||W||^2 / 2).
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
MAX_ITER = 1000


def encode(encoder, split, image_size, *, batch_size=256, verbose=0):
    """Features and labels of a split of ``(uint8 image, label)``: ``(float64 [N, F],
    int [N])``. The last batch is padded to a full one (and the padding dropped), so
    that every batch can be sharded over devices (``keras.distribution``)."""
    labels = np.concatenate([np.asarray(y) for y in split.map(lambda x, y: y).batch(4096)])
    n = len(labels)
    images = resize_images(split, image_size).map(lambda x, y: x)
    padding = tf.data.Dataset.from_tensors(tf.zeros([image_size, image_size, 3])).repeat(
        -n % batch_size)
    batches = images.concatenate(padding).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    features = encoder.predict(batches, verbose=verbose)[:n]
    return np.asarray(features, dtype=np.float64), labels.astype(int)


def encode_train_val(encoder, data, image_size, *, batch_size=256, verbose=0):
    """:func:`encode` of the train and validation splits of ``data``."""
    return tuple(encode(encoder, split, image_size, batch_size=batch_size, verbose=verbose)
                 for split in (data.train, data.val))


def standardiser(features):
    """``(mean, scale)`` of ``features`` [N, F] per column (a constant column: scale 1)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature: left as it is
    return mean, scale


def fold_standardisation(kernel, bias, mean, scale):
    """``(kernel', bias')`` acting on raw features ``x`` as ``(kernel, bias)`` acts on
    ``(x - mean) / scale``."""
    kernel = kernel / scale[:, None]
    return kernel, bias - mean @ kernel


def fit_logistic_probe(train, val, num_classes, *, grid=C_GRID, max_iter=MAX_ITER,
                       refit=False):
    """L-BFGS logistic regression on standardised features for each C of ``grid``;
    keeps the C with the best validation accuracy (ties: the smaller C). With
    ``refit``, the probe with that C is then fitted again on train + validation (and
    standardised on both): the choice is made on validation, the final probe sees
    every labelled image.

    ``train`` / ``val``: ``(features [N, F], labels [N])``. Returns ``(kernel [F, K],
    bias [K], report)``, kernel and bias acting on the raw features, and ``report``
    with one row per C (train / validation accuracy), the chosen C and what the
    returned probe was fitted on (``fitted_on``; its validation accuracy is that of
    the choice, before any refit).
    """
    from sklearn.linear_model import LogisticRegression

    (x, y), (xv, yv) = train, val
    mean, scale = standardiser(x)
    z, zv = (x - mean) / scale, (xv - mean) / scale
    rows, best = [], None
    for c in grid:
        model = LogisticRegression(C=c, max_iter=max_iter)
        model.fit(z, y)
        row = {"C": c, "accuracy": float(model.score(z, y)),
               "val_accuracy": float(model.score(zv, yv)) if len(yv) else float("nan"),
               "iterations": int(np.max(model.n_iter_))}
        rows.append(row)
        if best is None or row["val_accuracy"] > best[0]["val_accuracy"]:
            best = (row, model)
    row, model = best
    fitted_on = "train"
    if refit and len(yv):
        x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
        mean, scale = standardiser(x)
        model = LogisticRegression(C=row["C"], max_iter=max_iter).fit((x - mean) / scale, y)
        fitted_on = "train+validation"
    # every class present in training: coef_ is [K, F]; otherwise map the classes seen
    coef = np.zeros((num_classes, x.shape[1]))
    intercept = np.full(num_classes, -1e4)  # a class never seen in training: never predicted
    coef[model.classes_] = model.coef_
    intercept[model.classes_] = model.intercept_
    kernel, bias = fold_standardisation(coef.T, intercept, mean, scale)
    report = {"protocol": "L-BFGS logistic regression on cached, standardised features; "
                          "C chosen on the validation split"
                          + ("; refit on train + validation" if fitted_on != "train" else ""),
              "C": row["C"], "val_accuracy": row["val_accuracy"], "fitted_on": fitted_on,
              "fitted_images": len(y), "grid": rows}
    return kernel, bias, report


def fit_linear_probe(classifier, encoder, data, image_size, *, batch_size=256, verbose=0,
                     refit=False):
    """Fit the ``probabilities`` layer of ``classifier`` (a linear softmax on the frozen
    ``encoder``) by :func:`fit_logistic_probe` on the train / validation splits of
    ``data`` (``refit``: then on both with the chosen C); returns the report."""
    train, val = encode_train_val(encoder, data, image_size, batch_size=batch_size,
                                  verbose=verbose)
    kernel, bias, report = fit_logistic_probe(train, val, data.num_classes, refit=refit)
    layer = classifier.get_layer("probabilities")
    layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
    log.info("linear probe: C = %g, validation accuracy %.4f", report["C"],
             report["val_accuracy"])
    return report


def fit_mlp_probe(classifier, encoder, data, image_size, *, epochs=100, lr=1e-3,
                  batch_size=64, seed=0, batch_size_encode=256, verbose=0):
    """Train the ``hidden`` and ``probabilities`` layers of ``classifier`` (an MLP probe on
    the frozen ``encoder``, :func:`~keras_supcon.models.build_classifier` with ``hidden``)
    with Adam at ``lr`` for ``epochs`` on the cached, standardised features of ``data``;
    the best validation-accuracy epoch is kept (ties: the lower validation loss) and the
    standardisation folded into ``hidden``. Returns the report (one history row per epoch)."""
    (x, y), (xv, yv) = encode_train_val(encoder, data, image_size,
                                        batch_size=batch_size_encode, verbose=verbose)
    mean, scale = standardiser(x)
    hidden, softmax = classifier.get_layer("hidden"), classifier.get_layer("probabilities")
    inputs = keras.Input((x.shape[1],), name="features")
    head = keras.Model(inputs, softmax(hidden(inputs)), name="mlp_probe")
    keras.utils.set_random_seed(seed)
    # weighted: the zero-weight padding of the validation batches does not count
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                 weighted_metrics=["accuracy"])
    z = ((x - mean) / scale).astype("float32")
    zv = ((xv - mean) / scale).astype("float32")
    # Whole batches only, so that keras.distribution can shard every one: training
    # drops a reshuffled remainder each epoch; validation is padded with zero weights.
    batch = min(batch_size, len(y))
    train_ds = (tf.data.Dataset.from_tensor_slices((z, y)).shuffle(len(y), seed=seed)
                .batch(batch, drop_remainder=True))
    pad = -len(yv) % batch
    val_ds = tf.data.Dataset.from_tensor_slices((
        np.concatenate([zv, np.zeros((pad, zv.shape[1]), "float32")]),
        np.concatenate([yv, np.zeros(pad, yv.dtype)]),
        np.concatenate([np.ones(len(yv), "float32"), np.zeros(pad, "float32")]))).batch(batch)
    monitor = "val_accuracy"
    best = BestEpoch(monitor=monitor, tie_break="val_loss", mode="max", patience=epochs + 1)
    build_before_fit(head, train_ds.element_spec)
    history = head.fit(train_ds, epochs=epochs, validation_data=val_ds, callbacks=[best],
                       shuffle=False, verbose=0)  # train_ds reshuffles itself each epoch
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in hidden.get_weights())
    kernel, bias = fold_standardisation(kernel, bias, mean, scale)
    hidden.set_weights([kernel.astype("float32"), bias.astype("float32")])
    rows = [dict(zip(history.history, values)) for values in zip(*history.history.values())]
    best_epoch = best.best_epoch + 1
    report = {"protocol": f"Adam (lr {lr}) on cached, standardised features for {epochs} "
                          "epochs; the best validation-accuracy epoch kept (ties: the lower "
                          "validation loss)",
              "epoch": best_epoch, "val_accuracy": rows[best_epoch - 1]["val_accuracy"],
              "grid": rows}
    log.info("nn probe: epoch %d, validation accuracy %s", best_epoch, report["val_accuracy"])
    return report
