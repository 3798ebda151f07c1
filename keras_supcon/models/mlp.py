"""Fully-connected models of greedy layer-wise pre-training (Bengio et al. 2007; the
job is :mod:`keras_supcon.training.layerwise`): one-hidden-layer auto-encoders, the MLP
classifier they initialise, and inference helpers on NumPy arrays."""

import keras
import numpy as np

PREDICT_BATCH = 512


def decoder_activation(k, activation):
    """Output activation of auto-encoder ``k``: sigmoid where the target is in [0, 1]
    (pixels for ``k == 1``, sigmoid codes), linear for unbounded (ReLU) codes."""
    return "sigmoid" if k == 1 or activation == "sigmoid" else "linear"


def build_autoencoder(input_width, width, *, activation="relu", output_activation="linear",
                      noise=0.0, name="autoencoder"):
    """``[B, input_width] -> [B, input_width]``: (Gaussian noise) -> Dense ``encoder``
    (``width`` units) -> Dense ``decoder``."""
    inputs = keras.Input((input_width,), name="codes")
    x = keras.layers.GaussianNoise(noise, name="noise")(inputs) if noise else inputs
    x = keras.layers.Dense(width, activation=activation, name="encoder")(x)
    outputs = keras.layers.Dense(input_width, activation=output_activation, name="decoder")(x)
    return keras.Model(inputs, outputs, name=name)


def build_mlp(image_size, hidden, num_classes, *, activation="relu", dropout=0.0,
              name="layerwise_mlp"):
    """Raw images ``[B, S, S, 3]`` in [0, 255] -> class probabilities: ``/255``, flatten,
    Dense ``hidden_1 .. hidden_K`` (optionally each followed by dropout), Dense ``predictions``."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    for k, width in enumerate(hidden, start=1):
        x = keras.layers.Dense(width, activation=activation, name=f"hidden_{k}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{k}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def init_from_autoencoders(mlp, autoencoders):
    """Copy the encoder of ``autoencoders[k-1]`` into layer ``hidden_k`` of ``mlp``."""
    for k, ae in enumerate(autoencoders, start=1):
        mlp.get_layer(f"hidden_{k}").set_weights(ae.get_layer("encoder").get_weights())


def without_optimizer(model):
    """An uncompiled copy of ``model`` with its weights (a third of the file size of a
    model saved with its Adam state)."""
    copy = keras.Model.from_config(model.get_config())  # clone_model would compile it
    copy.set_weights(model.get_weights())
    return copy


def apply_batched(model, x, batch_size=PREDICT_BATCH):
    """``model.predict`` over the array ``x`` (inference: no noise, no dropout)."""
    return model.predict(x, batch_size=batch_size, verbose=0)


def hidden_codes(mlp, images, layer):
    """Outputs of ``hidden_<layer>`` of ``mlp`` for ``images`` (no dropout)."""
    return apply_batched(keras.Model(mlp.input, mlp.get_layer(f"hidden_{layer}").output), images)


def encode(autoencoders, x):
    """``x`` through the encoders of ``autoencoders`` in turn (each feeds the next)."""
    for ae in autoencoders:
        x = apply_batched(keras.Model(ae.input, ae.get_layer("encoder").output), x)
    return x


def pixels(images):
    """Images ``[N, S, S, 3]`` in [0, 255] -> float32 ``[N, 3 S^2]`` in [0, 1] (the input
    of the first auto-encoder; the classifier does the same internally)."""
    return (np.asarray(images, np.float32) / 255.0).reshape(len(images), -1)


def reconstruction_errors(autoencoders, arrays):
    """Per auto-encoder (in order): its widths and the mean squared reconstruction
    error of the kept weights on the train and validation codes (noise off); also
    ``val_relative_mse``, the validation error over that of always predicting the mean
    training code (codes of different layers have different scales; < 1: better than
    the mean)."""
    x = {s: pixels(arrays[s][0]) for s in ("train", "val")}
    rows = []
    for ae in autoencoders:
        mse = {}
        for split in ("train", "val"):
            out = apply_batched(ae, x[split])
            mse[split] = float(np.mean((out - x[split]) ** 2))
        mean_mse = float(np.mean((x["val"] - x["train"].mean(axis=0)) ** 2))
        rows.append({"input_width": int(x["train"].shape[1]),
                     "width": int(ae.get_layer("encoder").units),
                     "decoder_activation": ae.get_layer("decoder").get_config()["activation"],
                     "train_mse": mse["train"], "val_mse": mse["val"],
                     "val_relative_mse": mse["val"] / mean_mse if mean_mse > 0 else None})
        x = {s: encode([ae], v) for s, v in x.items()}
    return rows
