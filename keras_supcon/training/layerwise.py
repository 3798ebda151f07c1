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

import keras
import numpy as np

from keras_supcon.data.pipeline import image_arrays
from keras_supcon.errors import ConfigError, check_choice
from keras_supcon.evaluation import classification_metrics
from keras_supcon.evaluation.figures import plot_layerwise_curves, save_evaluation_figures
from keras_supcon.models.mlp import (
    apply_batched,
    build_autoencoder,
    build_mlp,
    decoder_activation,
    encode,
    hidden_codes,
    init_from_autoencoders,
    pixels,
    reconstruction_errors,
    without_optimizer,
)
from keras_supcon.runs.callbacks import read_history
from keras_supcon.runs.rundir import default_run_dir, open_run
from keras_supcon.runs.settings import VERBOSITY, check_verbosity, setting
from keras_supcon.training.optim import OPTIMIZERS
from keras_supcon.training.settings import load_data
from keras_supcon.training.stages import FitSettings, fit_stage

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "sigmoid")
DEFAULT_IMAGE_SIZE = 32
FINETUNE = "finetune"
CLASSIFIER_FILE = "classifier.keras"


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

    dataset: str = setting(
        "digits", "digits | a TFDS name (cifar10, ...) | a .npz file (x_train, y_train, x_test, "
        "y_test) | a folder of class sub-folders", group="data")
    data_dir: str | None = setting(None, "TFDS data directory", group="data")
    image_size: int | None = setting(
        None, "images are resized to S x S x 3, flattened and scaled to [0, 1] (default 32)",
        group="data")
    val_fraction: float = setting(0.1, "part of the training data held out for validation",
                                  group="data")
    hidden: tuple = setting((1024, 1200, 728, 512, 128), "widths of the hidden layers, input "
                            "side first", group="model", metavar="W1,W2,...", parse=parse_hidden)
    activation: str = setting("relu", "of the hidden layers", group="model", choices=ACTIVATIONS)
    dropout: float = setting(0.0, "dropout after each hidden layer while fine-tuning",
                             group="model")
    pretrain: bool = setting(True, "auto-encoder pre-training; --no-pretrain: the same network "
                                   "from random initialisation (the baseline)")
    pretrain_epochs: int = setting(5, "epochs per auto-encoder")
    epochs: int = setting(10, "fine-tuning epochs")
    batch_size: int = setting(64, "batch size")
    optimizer: str = setting("adam", "optimizer of every stage", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "peak fine-tuning learning rate (linear warm-up, then cosine "
                              "decay)")
    pretrain_lr: float | None = setting(None, "peak learning rate of the auto-encoders "
                                              "(default: --lr)")
    weight_decay: float = setting(0.0, "decoupled weight decay of the optimizer")
    warmup_fraction: float = setting(0.1, "part of a stage's steps with a linear warm-up")
    noise: float = setting(0.0, "std of Gaussian noise on each auto-encoder's input (denoising "
                                "auto-encoders); 0: off")
    early_stopping: int | None = setting(
        None, "stop a stage after PATIENCE epochs without validation improvement (the best "
              "epoch is always kept)", metavar="PATIENCE")
    seed: int = setting(0, "seed of the weights and the split's shuffling")
    tsne_layer: int | None = setting(None, "t-SNE of the test codes of hidden layer K (1 = "
                                           "nearest the input; default: the last)",
                                     group="report", metavar="K")
    out: str | None = setting(None, "RUN_DIR (default: runs/<time>-<dataset>-layerwise-"
                                    "<pretrained|scratch>)", group="run directory")
    verbose: str = setting("auto", "Keras progress output (auto: progress bars)",
                           group="run directory", choices=VERBOSITY)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self):
        """Check every setting that can be checked without data; fill in defaults."""
        self.hidden = parse_hidden(self.hidden)
        self.verbose = check_verbosity(self.verbose)
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
            kind = "pretrained" if self.pretrain else "scratch"
            self.out = str(default_run_dir(self.dataset, "layerwise", kind))
        return self


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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
            fit_stage(ae, (x_train, x_train), (x_val, x_val), run=run, stage=stage,
                      fit=FitSettings.of(config), loss="mse", metrics=None,
                      monitor="val_loss", mode="min", epochs=config.pretrain_epochs,
                      lr=config.pretrain_lr)
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
    fit_stage(classifier, (x_train, y_train), val, run=run, stage=FINETUNE,
              fit=FitSettings.of(config), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"], monitor="val_accuracy", tie_break="val_loss", mode="max",
              epochs=config.epochs, lr=config.lr)
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
    data = load_data(config)
    run.begin(asdict(config), resume=resume)

    keras.utils.set_random_seed(config.seed)
    arrays = image_arrays(data, config.image_size)
    autoencoders = _pretrain(config, arrays, run) if config.pretrain else []
    classifier = run.stage(
        FINETUNE, lambda: _finetune(config, arrays, run, data.num_classes, autoencoders),
        CLASSIFIER_FILE)

    metrics = evaluate_layerwise(config, data, arrays, run, classifier, autoencoders)
    return run.finish(metrics, started)


# ------------------------------------------------------------------ report
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
        autoencoders=[{"stage": ae_stage(k), **row,
                       "epochs": sum(1 for r in history if r["stage"] == ae_stage(k))}
                      for k, row in enumerate(reconstruction_errors(autoencoders, arrays), 1)])
    kind = "layer-wise pre-trained" if config.pretrain else "random init"
    widths = "-".join(str(w) for w in config.hidden)
    title = (f"{data.name} | MLP {widths} ({config.activation}) | {kind} | "
             f"test accuracy {metrics['accuracy']:.3f}")

    save_evaluation_figures(
        run, metrics, title, curves=plot_layerwise_curves(history, FINETUNE, title),
        codes=hidden_codes(classifier, x_test, config.tsne_layer), labels=y_test,
        class_names=data.class_names, seed=config.seed,
        what=f"test codes of hidden layer {config.tsne_layer} "
             f"({config.hidden[config.tsne_layer - 1]} units)")
    return metrics
