"""The stages of a run, each one ``model.fit`` on the run directory's lifecycle.

- :func:`fit_stage`: compile and fit any model as a stage (history, per-epoch
  checkpoints, best epoch, resume, precise BatchNorm); it reads only a
  :class:`FitSettings`, so every job (training, layer-wise, pseudo-labelling, the
  lottery ticket) calls it with the same meaning;
- :func:`pretrain`: encoder + head on augmented views with a representation loss;
- :func:`train_classifier`: cross-entropy (``center``: + center loss) on images;
- :func:`train_joint`: ``supcon+ce``, cross-entropy and SupCon in one fit;
- :func:`fit_probe`: the classifier on the frozen encoder (cached features or images).
"""

import dataclasses
import logging
from dataclasses import dataclass

import keras
import tensorflow as tf

from keras_supcon.data import contrastive_batches, supervised_batches
from keras_supcon.data.pipeline import joint_targets
from keras_supcon.losses import joint_loss
from keras_supcon.losses.registry import build_pretraining_loss
from keras_supcon.models import freeze
from keras_supcon.models.batchnorm import batchnorm_layers, precise_batchnorm
from keras_supcon.runs.callbacks import (
    PreciseBatchNorm,
    read_history,
    stage_callbacks,
    write_history,
)
from keras_supcon.training import build
from keras_supcon.training.optim import build_before_fit, make_optimizer, steps_per_epoch
from keras_supcon.training.probe import fit_linear_probe, fit_mlp_probe
from keras_supcon.training.settings import augmentation_policies

log = logging.getLogger(__name__)

PROBE_FILE = "probe.json"  # how the probe on cached features was fitted and chosen


@dataclass(frozen=True)
class FitSettings:
    """What :func:`fit_stage` reads of a job's settings."""

    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    clipnorm: float | None = None
    batch_size: int = 64  # of array inputs
    early_stopping: int | None = None
    precise_bn_batches: int = 0
    verbose: object = "auto"

    @classmethod
    def of(cls, config):
        """The fit settings of a job's settings ``config`` (a :class:`TrainConfig`, a
        ``LayerwiseConfig``, ...); a setting the job does not have keeps its default
        here (the layer-wise job has no gradient clipping and no BatchNorm)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                      if hasattr(config, f.name)})


def fit_stage(model, train, val, *, run, stage, fit, loss, metrics, monitor, mode, epochs, lr,
              steps=None, extra_callbacks=(), precise_bn=None, loss_weights=None,
              tie_break=None):
    """Compile and ``model.fit`` ``model`` as stage ``stage`` of ``run``: history,
    per-epoch checkpoints, the best epoch on ``monitor`` kept (also across
    ``--resume``; ties to the lower ``tie_break``), optional early stopping, then
    ``extra_callbacks``. ``fit``: a :class:`FitSettings`.

    ``train``: a tf.data dataset of batches (``steps`` per epoch; it shuffles
    itself), or ``(x, y)`` arrays, batched by ``fit.batch_size`` and shuffled
    each epoch. ``precise_bn=(target, clean batches)``: the BatchNorm statistics of
    ``target`` are recomputed over ``fit.precise_bn_batches`` clean training batches
    before each validation pass and at the end.
    """
    if isinstance(train, tuple):
        x, y = train
        steps = steps_per_epoch(len(x), fit.batch_size)
        data_args = dict(x=x, y=y, batch_size=fit.batch_size, shuffle=True)
        first_batch = (x[:fit.batch_size], y[:fit.batch_size])
    else:
        data_args = dict(x=train, shuffle=False)
        first_batch = train.element_spec
    model.compile(
        optimizer=make_optimizer(fit.optimizer, lr, total_steps=epochs * steps,
                                 weight_decay=fit.weight_decay,
                                 warmup_fraction=fit.warmup_fraction, clipnorm=fit.clipnorm),
        loss=loss, loss_weights=loss_weights, metrics=metrics)
    build_before_fit(model, first_batch)
    callbacks = stage_callbacks(run, stage, monitor=monitor, mode=mode, epochs=epochs,
                                patience=fit.early_stopping,
                                tie_break=tie_break) + list(extra_callbacks)
    calibrate = precise_bn is not None and fit.precise_bn_batches > 0
    if calibrate:
        target, clean = precise_bn
        callbacks.insert(0, PreciseBatchNorm(target, clean, fit.precise_bn_batches))
    log.info("stage %s: %d epochs of %d steps", stage, epochs, steps)
    model.fit(**data_args, validation_data=val, epochs=epochs, callbacks=callbacks,
              verbose=fit.verbose)
    if calibrate:  # the weights kept (best epoch) with statistics of their own
        precise_batchnorm(target, clean, max_batches=fit.precise_bn_batches)


def whole_batches(config):
    """keras.distribution shards every batch evenly over the devices: no partial batches."""
    return config.strategy == "data-parallel"


def clean_batches(config, data):
    """Un-augmented, shuffled training batches: what precise BatchNorm statistics are
    computed over."""
    return supervised_batches(data.train, config.image_size, config.batch_size, shuffle=True,
                              seed=config.seed, cache=config.cache,
                              num_examples=data.sizes["train"],
                              drop_remainder=whole_batches(config))


def pretrain(config, data, run, encoder):
    """Stage ``pretrain``: ``encoder`` + the loss's head on augmented views."""
    n_train, n_val = data.sizes["train"], data.sizes["val"]
    kw = dict(views=config.views, cache=config.cache, policy=augmentation_policies(config, data)[0])
    train_ds = contrastive_batches(data.train, config.image_size, config.batch_size,
                                   shuffle=True, seed=config.seed, num_examples=n_train, **kw)
    val_batch = min(config.batch_size, n_val)
    val_ds = (contrastive_batches(data.val, config.image_size, val_batch, shuffle=False,
                                  num_examples=n_val, **kw) if val_batch >= 2 else None)
    head = build.projection_head(config, encoder.output_shape[-1])
    model = build.contrastive_model(config, encoder, head)
    # The Barlow projector has BatchNorm too: its statistics (and the encoder's) are
    # recomputed through encoder + head on clean images (shared layers).
    target = (keras.Model(encoder.inputs, head(encoder.outputs[0]), name="encoder_and_head")
              if batchnorm_layers(head) else encoder)
    fit_stage(model, train_ds, val_ds, run=run, stage="pretrain", fit=FitSettings.of(config),
              loss=build_pretraining_loss(config), metrics=None,
              monitor="val_loss" if val_ds is not None else "loss", mode="min",
              epochs=config.epochs, lr=config.lr,
              steps=steps_per_epoch(n_train, config.batch_size, True),
              precise_bn=(target, clean_batches(config, data)))


def _labels_as_input(ds):
    return ds.map(lambda x, y: ((x, tf.cast(y, tf.int32)), y))


def train_classifier(config, data, run, classifier, stage, epochs, lr, extra_callbacks=()):
    """Cross-entropy training of ``classifier`` as stage ``stage`` of ``run`` (train split
    augmented unless ``config.augment`` is off, best validation-accuracy epoch kept (ties:
    the lower validation loss);
    settings from ``config``; ``config.loss == "center"`` adds the center loss in every
    job that trains a classifier this way: the run's, pseudo-labelling's teacher and
    students, the lottery ticket's networks)."""
    n_train = data.sizes["train"]
    whole = whole_batches(config)
    train_ds = supervised_batches(data.train, config.image_size, config.batch_size,
                                  augment=config.augment,
                                  policy=augmentation_policies(config, data)[1], shuffle=True,
                                  seed=config.seed, cache=config.cache, num_examples=n_train,
                                  drop_remainder=whole)
    val_ds = supervised_batches(data.val, config.image_size, config.batch_size,
                                cache=config.cache, drop_remainder=whole)
    inference_model = classifier  # images -> probabilities
    if config.loss == "center":
        classifier = build.center_loss_model(classifier, data.num_classes, config.center_weight,
                                             config.center_alpha)
        train_ds, val_ds = _labels_as_input(train_ds), _labels_as_input(val_ds)
    # A frozen encoder's BatchNorm does not train: its statistics were made precise before.
    trains_bn = any(layer.trainable for layer in batchnorm_layers(classifier))
    fit_stage(classifier, train_ds, val_ds, run=run, stage=stage, fit=FitSettings.of(config),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              monitor="val_accuracy", tie_break="val_loss", mode="max", epochs=epochs, lr=lr,
              steps=steps_per_epoch(n_train, config.batch_size, whole),
              extra_callbacks=extra_callbacks,
              precise_bn=(inference_model, clean_batches(config, data)) if trains_bn else None)


def train_joint(config, data, run, classifier, encoder):
    """Stage ``ce`` of ``--loss supcon+ce``: the encoder, the projection head and the
    softmax of ``classifier`` trained together on augmented views, CE on every view +
    ``supcon_weight`` x SupCon; validation (and the best epoch) on clean images."""
    n_train, views = data.sizes["train"], config.views
    train_ds = contrastive_batches(data.train, config.image_size, config.batch_size,
                                   views=views, policy=augmentation_policies(config, data)[0],
                                   shuffle=True, seed=config.seed, cache=config.cache,
                                   num_examples=n_train).map(joint_targets)
    val_ds = supervised_batches(data.val, config.image_size, config.batch_size,
                                cache=config.cache, drop_remainder=whole_batches(config)).map(
        lambda x, y: joint_targets(tf.stack([x] * views, axis=1), y))
    args = joint_loss(supcon_weight=config.supcon_weight, temperature=config.temperature,
                      variant=config.variant)
    fit_stage(build.joint_model(config, encoder, classifier), train_ds, val_ds, run=run,
              stage="ce", fit=FitSettings.of(config), loss=args["loss"],
              metrics=args["metrics"], loss_weights=args["loss_weights"],
              monitor="val_probabilities_accuracy", tie_break="val_probabilities_loss",
              mode="max", epochs=config.epochs,
              lr=config.lr, steps=steps_per_epoch(n_train, config.batch_size, True),
              precise_bn=(encoder, clean_batches(config, data)))


def fit_probe(config, data, run, encoder):
    """Stage ``linear``: the run's classifier on the frozen ``encoder``; cached features
    (``probe.json`` and the grid in the history) or ``model.fit`` on images."""
    classifier = build.classifier(config, freeze(encoder), data.num_classes)
    if config.probe_fit == "images":
        train_classifier(config, data, run, classifier, "linear", config.linear_epochs,
                         config.linear_lr)
        return classifier
    if config.probe == "linear":
        report = fit_linear_probe(classifier, encoder, data, config.image_size,
                                  verbose=config.verbose, refit=config.probe_refit)
    else:
        report = fit_mlp_probe(classifier, encoder, data, config.image_size,
                               epochs=config.probe_epochs, lr=config.linear_lr,
                               batch_size=config.batch_size, seed=config.seed,
                               verbose=config.verbose)
    write_history(run, read_history(run) + [
        {"stage": "linear", "epoch": i + 1, **row} for i, row in enumerate(report["grid"])])
    run.write_json(PROBE_FILE, report)
    return classifier
