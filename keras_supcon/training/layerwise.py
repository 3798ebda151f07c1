"""Greedy layer-wise auto-encoder pre-training of a fully-connected classifier
(Bengio, Lamblin, Popovici & Larochelle, 2007, "Greedy Layer-Wise Training of
Deep Networks"), as one library call: :func:`train_layerwise`.

Input: every image is resized to ``S x S x 3`` (bilinear; gray images are
replicated to three channels, as everywhere in the package), flattened in
row-major ``(row, column, channel)`` order and scaled to [0, 1] by dividing by
255. The saved classifier does that itself (``Rescaling`` + ``Flatten``): like
every model of the package it takes raw ``[B, S, S, 3]`` RGB in [0, 255].
The three splits are held in memory as float32 arrays (``N * 3 S^2 * 4`` bytes,
e.g. 0.6 GB for the 50,000 CIFAR-10 training images at S = 32).

Stages (each resumable from its last per-epoch checkpoint, history in
``history.csv``):

1. ``ae1 .. aeK`` (``pretrain=True`` only): hidden layer ``k`` is trained as a
   one-hidden-layer auto-encoder ``Dense(h_k, activation)`` (encoder) ->
   ``Dense(h_{k-1})`` (decoder) with the mean squared reconstruction error, on
   the codes of layers ``1 .. k-1`` (already trained, frozen). The decoder is
   sigmoid where its target lies in [0, 1] (the pixels of layer 1, or the codes
   of sigmoid layers) and linear otherwise (ReLU codes are unbounded).
   Optional denoising: Gaussian noise of std ``noise`` on the auto-encoder's
   input while it trains. Model selection on the validation reconstruction
   error (``val_loss``); saved as ``aeK.keras``.
2. ``finetune``: the stack of encoders (copied from the auto-encoders, or random
   for ``pretrain=False``, the baseline) + a softmax layer, trained end to end
   with sparse categorical cross-entropy; best validation-accuracy epoch kept;
   saved as ``classifier.keras``.

Then ``metrics.json`` (test accuracy, macro precision / recall / F1, per-class
accuracy, confusion matrix, the reconstruction error of each auto-encoder) and
the figures ``curves.png``, ``confusion.png`` and ``tsne.png`` (test codes of
hidden layer ``tsne_layer``).
"""

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from keras_supcon.data import load_dataset
from keras_supcon.data.pipeline import resize_images
from keras_supcon.errors import ConfigError, check_choice
from keras_supcon.evaluation import (
    classification_metrics,
    plot_confusion,
    plot_tsne,
    tsne_embedding,
)
from keras_supcon.runs.callbacks import read_history
from keras_supcon.runs.rundir import open_run
from keras_supcon.training.optim import OPTIMIZERS
from keras_supcon.training.run import fit_stage

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "sigmoid")
DEFAULT_IMAGE_SIZE = 32
FINETUNE = "finetune"
CLASSIFIER_FILE = "classifier.keras"
PREDICT_BATCH = 512


def ae_stage(k):
    """Name of the stage (and ``<name>.keras`` file) pre-training hidden layer ``k`` (1-based)."""
    return f"ae{k}"


def parse_hidden(value):
    """Hidden-layer widths as a tuple of ints, from ``"1024,512"`` or ``[1024, 512]``."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")] if value.strip() else []
        try:
            widths = [int(v) for v in items]
        except ValueError:
            raise ConfigError("hidden layer widths must be positive integers separated by "
                              f"commas (e.g. 1024,512); got {value!r}") from None
    elif isinstance(value, (list, tuple)):
        widths = list(value)
    else:
        raise ConfigError(f"hidden layer widths must be a list of positive integers; "
                          f"got {value!r}")
    if not widths:
        raise ConfigError("give at least one hidden layer width (e.g. --hidden 1024,512); "
                          "got none")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError(f"hidden layer widths must be positive integers; got "
                          f"[{', '.join(str(w) for w in widths)}]")
    return tuple(widths)


@dataclass
class LayerwiseConfig:
    """Every setting of a layer-wise run (written to ``config.json``)."""

    dataset: str = "digits"
    data_dir: str = None
    image_size: int = None  # default 32: images are resized to S x S x 3 and flattened
    hidden: tuple = (1024, 1200, 728, 512, 128)  # widths of the hidden layers, input side first
    activation: str = "relu"  # of the hidden layers: relu | sigmoid
    pretrain: bool = True  # False: the same network trained from random initialisation
    pretrain_epochs: int = 5  # per auto-encoder
    epochs: int = 10  # fine-tuning
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3  # peak learning rate of fine-tuning
    pretrain_lr: float = None  # of the auto-encoders; default: lr
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    noise: float = 0.0  # std of Gaussian noise on each auto-encoder's input (denoising); 0: off
    dropout: float = 0.0  # after each hidden layer of the classifier while fine-tuning
    early_stopping: int = None  # patience in epochs; None: run all epochs, keep the best
    val_fraction: float = 0.1
    seed: int = 0
    tsne_layer: int = None  # 1-based hidden layer whose test codes the t-SNE shows; None: last
    out: str = None
    verbose: str = "auto"  # Keras fit verbosity: "auto" (progress bar), 0, 1 or 2

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self):
        """Check every setting that can be checked without data; fill in defaults."""
        self.hidden = parse_hidden(self.hidden)
        if self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ConfigError(f"image size must be a positive integer; got {self.image_size}")
        check_choice(self.activation, ACTIVATIONS, "activation")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        for name in ("epochs", "pretrain_epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be an integer >= 1; "
                                  f"got {value}")
        if self.pretrain_lr is None:
            self.pretrain_lr = self.lr
        for name, what in (("lr", "learning rate"), ("pretrain_lr", "pre-training learning rate")):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{what} must be > 0; got {getattr(self, name)}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight decay must be >= 0; got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warm-up fraction must be in [0, 1); got {self.warmup_fraction}")
        if not self.noise >= 0:
            raise ConfigError(f"noise (std of the denoising noise) must be >= 0; got {self.noise}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.early_stopping is not None and (not _is_int(self.early_stopping)
                                                or self.early_stopping < 1):
            raise ConfigError(f"early-stopping patience must be >= 1; got {self.early_stopping}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        n = len(self.hidden)
        if self.tsne_layer is None:
            self.tsne_layer = n
        if not _is_int(self.tsne_layer) or not 1 <= self.tsne_layer <= n:
            raise ConfigError(f"tsne layer {self.tsne_layer} is out of range: the network has "
                              f"{n} hidden layer(s), numbered 1 to {n}")
        if self.out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = Path(str(self.dataset)).stem or "data"
            kind = "pretrained" if self.pretrain else "scratch"
            self.out = str(Path("runs") / f"{stamp}-{name}-layerwise-{kind}")
        return self


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ------------------------------------------------------------------ models
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


# ------------------------------------------------------------------ data
def image_arrays(data, image_size):
    """``{split: (images float32 [N, S, S, 3] in [0, 255], labels int64 [N])}`` of a
    :class:`~keras_supcon.data.DataSplits` (resized with the package's ``resize_images``)."""
    arrays = {}
    for split in ("train", "val", "test"):
        xs, ys = [], []
        for x, y in resize_images(getattr(data, split), image_size).batch(1024):
            xs.append(x.numpy())
            ys.append(y.numpy())
        shape = (0, image_size, image_size, 3)
        arrays[split] = (np.concatenate(xs) if xs else np.zeros(shape, np.float32),
                         np.concatenate(ys) if ys else np.zeros((0,), np.int64))
    return arrays


def pixels(images):
    """Images ``[N, S, S, 3]`` in [0, 255] -> float32 ``[N, 3 S^2]`` in [0, 1] (the input
    of the first auto-encoder; the classifier does the same internally)."""
    return (np.asarray(images, np.float32) / 255.0).reshape(len(images), -1)


# ------------------------------------------------------------------ stages
def _pretrain(config, arrays, run):
    """Stages ``ae1 .. aeK``: the trained auto-encoders (loaded where already done)."""
    x_train, x_val = pixels(arrays["train"][0]), pixels(arrays["val"][0])
    autoencoders = []
    for k, width in enumerate(config.hidden, start=1):
        stage = ae_stage(k)

        def train():  # (called right away, with this iteration's k, width, data)
            ae = build_autoencoder(x_train.shape[1], width, activation=config.activation,
                                   output_activation=decoder_activation(k, config.activation),
                                   noise=config.noise, name=f"autoencoder_{k}")
            fit_stage(ae, (x_train, x_train), (x_val, x_val), run=run, stage=stage, config=config,
                      loss="mse", metrics=None, monitor="val_loss", mode="min",
                      epochs=config.pretrain_epochs, lr=config.pretrain_lr)
            return ae

        ae = run.stage(stage, train, f"{stage}.keras", saved=without_optimizer)
        autoencoders.append(ae)
        if k < len(config.hidden):  # the codes of this layer are the next one's data
            x_train, x_val = encode([ae], x_train), encode([ae], x_val)
    return autoencoders


def _finetune(config, arrays, run, num_classes, autoencoders):
    classifier = build_mlp(config.image_size, config.hidden, num_classes,
                           activation=config.activation, dropout=config.dropout)
    if autoencoders:
        init_from_autoencoders(classifier, autoencoders)
    (x_train, y_train), val = arrays["train"], arrays["val"]
    fit_stage(classifier, (x_train, y_train), val, run=run, stage=FINETUNE, config=config,
              loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              monitor="val_accuracy", mode="max", epochs=config.epochs, lr=config.lr)
    return classifier


def train_layerwise(config=None, *, resume=False, overwrite=False, **settings):
    """Run the whole job and return the test metrics (also in ``RUN_DIR/metrics.json``).

    ``train_layerwise(LayerwiseConfig(...))`` or ``train_layerwise(hidden=(256, 64), ...)``.
    ``resume=True`` continues the interrupted run in ``config.out`` with its saved
    settings (completed stages are loaded, the stage in progress continues from its
    last epoch); a run already in ``out`` is refused unless ``overwrite``.
    """
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(LayerwiseConfig)})
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    config = dataclasses.replace(config or LayerwiseConfig(), **settings)
    config, run = open_run(config, resume=resume, overwrite=overwrite)

    started = time.time()
    # Data errors surface before a new run writes anything.
    data = load_dataset(config.dataset, data_dir=config.data_dir,
                        val_fraction=config.val_fraction, seed=config.seed)
    log.info("data %s", data.describe())
    if not resume:
        run.start(asdict(config))

    keras.utils.set_random_seed(config.seed)
    arrays = image_arrays(data, config.image_size)
    autoencoders = _pretrain(config, arrays, run) if config.pretrain else []
    classifier = run.stage(
        FINETUNE, lambda: _finetune(config, arrays, run, data.num_classes, autoencoders),
        CLASSIFIER_FILE)

    metrics = evaluate_layerwise(config, data, arrays, run, classifier, autoencoders)
    metrics["wall_time_s"] = round(time.time() - started, 1)
    metrics["run_dir"] = str(run.path)
    run.write_json("metrics.json", metrics)
    run.mark_finished()
    return metrics


# ------------------------------------------------------------------ report
def reconstruction_errors(autoencoders, arrays, history=()):
    """Per auto-encoder: its widths, epochs trained, and the mean squared reconstruction
    error of the kept weights on the train and validation codes (noise off); also
    ``val_relative_mse``, the validation error over that of always predicting the mean
    training code (codes of different layers have different scales; < 1: better than
    the mean)."""
    x = {s: pixels(arrays[s][0]) for s in ("train", "val")}
    rows = []
    for k, ae in enumerate(autoencoders, start=1):
        stage = ae_stage(k)
        mse = {}
        for split in ("train", "val"):
            out = apply_batched(ae, x[split])
            mse[split] = float(np.mean((out - x[split]) ** 2))
        mean_mse = float(np.mean((x["val"] - x["train"].mean(axis=0)) ** 2))
        rows.append({"stage": stage, "input_width": int(x["train"].shape[1]),
                     "width": int(ae.get_layer("encoder").units),
                     "decoder_activation": ae.get_layer("decoder").get_config()["activation"],
                     "epochs": sum(1 for r in history if r["stage"] == stage),
                     "train_mse": mse["train"], "val_mse": mse["val"],
                     "val_relative_mse": mse["val"] / mean_mse if mean_mse > 0 else None})
        x = {s: encode([ae], v) for s, v in x.items()}
    return rows


def plot_layerwise_curves(history, title=""):
    """Reconstruction error per epoch of each auto-encoder (left, log scale), and
    fine-tuning loss (middle) and accuracy (right)."""
    from matplotlib.ticker import MaxNLocator

    from keras_supcon.evaluation.figures import new_figure

    fig, (ax_ae, ax_loss, ax_acc) = new_figure(1, 3, figsize=(15, 4))
    stages = list(dict.fromkeys(r["stage"] for r in history))
    for i, stage in enumerate(s for s in stages if s != FINETUNE):
        rows = [r for r in history if r["stage"] == stage]
        epochs = [r["epoch"] for r in rows]
        for key, style in (("loss", "-"), ("val_loss", "--")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                split = "validation" if key.startswith("val_") else "train"
                ax_ae.plot(epochs, [np.nan if v is None else v for v in values], style,
                           color=f"C{i % 10}", marker="o", ms=3, label=f"{stage} ({split})")
    rows = [r for r in history if r["stage"] == FINETUNE]
    epochs = [r["epoch"] for r in rows]
    for key, ax, style in (("loss", ax_loss, "-"), ("val_loss", ax_loss, "--"),
                           ("accuracy", ax_acc, "-"), ("val_accuracy", ax_acc, "--")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            split = "validation" if key.startswith("val_") else "train"
            ax.plot(epochs, [np.nan if v is None else v for v in values], style, color="C0",
                    marker="o", ms=3, label=split)
    ax_ae.set(xlabel="epoch", ylabel="mean squared error",
              title="Auto-encoder reconstruction error" if ax_ae.lines
              else "No pre-training (random initialisation)")
    if ax_ae.lines:
        ax_ae.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Fine-tuning loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Fine-tuning accuracy", ylim=(0, 1))
    for ax in (ax_ae, ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7 if len(ax.lines) > 6 else 8, ncol=2 if len(ax.lines) > 6 else 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def evaluate_layerwise(config, data, arrays, run, classifier, autoencoders):
    """Test metrics, reconstruction errors and figures of a trained layer-wise run."""
    x_test, y_test = arrays["test"]
    probs = apply_batched(classifier, x_test)
    metrics = classification_metrics(y_test, probs, data.class_names)
    history = read_history(run)
    metrics.update(
        dataset=data.name, method="layerwise", pretrain=config.pretrain,
        hidden=list(config.hidden), activation=config.activation, image_size=config.image_size,
        split_sizes=data.sizes, num_parameters=int(classifier.count_params()),
        autoencoders=reconstruction_errors(autoencoders, arrays, history))
    kind = "layer-wise pre-trained" if config.pretrain else "random init"
    widths = "-".join(str(w) for w in config.hidden)
    title = (f"{data.name} | MLP {widths} ({config.activation}) | {kind} | "
             f"test accuracy {metrics['accuracy']:.3f}")

    run.save_figure(plot_layerwise_curves(history, title), "curves.png")
    codes = hidden_codes(classifier, x_test, config.tsne_layer)
    points, point_labels = tsne_embedding(codes, y_test, max_per_class=500, seed=config.seed)
    run.save_figure(plot_tsne(points, point_labels, data.class_names,
                              f"t-SNE of test codes of hidden layer {config.tsne_layer} "
                              f"({config.hidden[config.tsne_layer - 1]} units)\n{title}"),
                    "tsne.png")
    run.save_figure(plot_confusion(metrics["confusion_matrix"], data.class_names,
                                   f"Confusion matrix (test)\n{title}"), "confusion.png")
    return metrics
