"""The whole job of ``python -m keras_supcon.train``, as one library call.

Stages (each resumable from its last per-epoch checkpoint):

1. ``pretrain``: encoder + projection head trained with a representation loss on
   augmented views of each image: ``supcon``, ``simclr``, ``npairs``,
   ``triplet`` (any number of views) or ``barlow`` (exactly two);
2. ``linear``: encoder frozen, classifier trained with cross-entropy: a linear
   softmax (``probe="linear"``, :func:`fine_tune_linear`) or a one-hidden-layer
   MLP (``probe="nn"``, :func:`fine_tune_nn`);

or, for the end-to-end losses, one ``ce`` stage training the classifier end to
end: ``ce`` (cross-entropy), ``center`` (cross-entropy + ``center_weight`` x
center loss on the encoder features), ``supcon+ce`` (cross-entropy on every view
+ ``supcon_weight`` x SupCon on the projection head, Gunel et al. 2021). Then test metrics (classification and
embedding quality), figures and a SavedModel export, all into the run directory.
"""

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import keras
import tensorflow as tf

from keras_supcon.data import DataSplits, contrastive_batches, load_dataset, supervised_batches
from keras_supcon.data.augment import default_policy_name, get_policy
from keras_supcon.data.pipeline import check_contrastive_batch_size, joint_targets
from keras_supcon.errors import ConfigError, check_choice
from keras_supcon.evaluation import (
    classification_metrics,
    embedding_metrics,
    plot_confusion,
    plot_curves,
    plot_tsne,
    predict,
    tsne_embedding,
)
from keras_supcon.losses import CenterLoss, joint_loss
from keras_supcon.losses.registry import (
    END_TO_END,
    PRETRAIN,
    build_pretraining_loss,
    loss_names,
    loss_specific_settings,
    uses_setting,
)
from keras_supcon.losses.registry import LOSSES as LOSS_SPECS
from keras_supcon.losses.triplet import MINING
from keras_supcon.models import (
    build_barlow_projector,
    build_classifier,
    build_contrastive_model,
    build_encoder,
    build_joint_model,
    build_projection_head,
    freeze,
    get_backbone,
)
from keras_supcon.models.backbones import normalize_weights, resolve_image_size
from keras_supcon.models.batchnorm import (
    batchnorm_layers,
    precise_batchnorm,
    set_batchnorm_momentum,
)
from keras_supcon.runs.callbacks import (
    PreciseBatchNorm,
    read_history,
    stage_callbacks,
    write_history,
)
from keras_supcon.runs.export import check_saved_model, export_saved_model
from keras_supcon.runs.rundir import RunDir, open_run
from keras_supcon.training.distribute import (
    check_global_batch,
    check_strategy,
    distribution_scope,
    precision_policy,
    process_local,
)
from keras_supcon.training.optim import OPTIMIZERS, make_optimizer, steps_per_epoch
from keras_supcon.training.probe import fit_linear_probe, fit_mlp_probe

log = logging.getLogger(__name__)

PROBE_FILE = "probe.json"  # how the probe on cached features was fitted and chosen

PRETRAIN_LOSSES = loss_names(PRETRAIN)  # then a probe on the frozen encoder
END_TO_END_LOSSES = loss_names(END_TO_END)  # one cross-entropy stage
LOSSES = tuple(LOSS_SPECS)
VIEW_LOSSES = loss_names(views=True)  # trained on augmented views of each image
DEFAULT_TEMPERATURE = {n: s.temperature for n, s in LOSS_SPECS.items() if s.temperature}
PROBES = ("linear", "nn")
PROBE_FITS = ("cached", "images")
# Settings used by some losses only; any other setting applies to every run.
LOSS_SETTINGS = loss_specific_settings()


@dataclass
class TrainConfig:
    """Every setting of a run (written to ``config.json``)."""

    dataset: str = "digits"
    data_dir: str = None
    backbone: str = "small_resnet"
    weights: str = "none"
    image_size: int = None  # default: the backbone's default size
    loss: str = "supcon"
    temperature: float = None  # default: 0.1 (supcon, simclr), 0.05 (npairs, as the tutorial)
    variant: str = "out"
    margin: float = 0.2  # triplet
    mining: str = "semihard"  # triplet: semihard | hard | all | random
    squared_distance: bool = False  # triplet
    barlow_lambda: float = 5e-3  # barlow: weight of the off-diagonal term
    center_weight: float = 0.003  # center: lambda of CE + lambda * center loss
    center_alpha: float = 0.5  # center: centre update rate
    supcon_weight: float = 1.0  # supcon+ce: w in CE + w * SupCon
    views: int = 2
    projection_dim: int = 128
    head_hidden: int = 512  # barlow: width of the projector's hidden layers
    probe: str = "linear"  # classifier on the frozen encoder: linear | nn
    probe_hidden: int = 512  # width of the nn probe's hidden layer
    # "cached": features of the frozen encoder extracted once; linear probe by L-BFGS
    # logistic regression (C chosen on the validation split), nn probe by Adam for
    # probe_epochs (best validation epoch kept). "images": model.fit of the classifier on
    # augmented images through the frozen encoder (linear_epochs, linear_lr).
    probe_fit: str = "cached"
    probe_epochs: int = 100  # nn probe on cached features
    epochs: int = 5
    linear_epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    linear_lr: float = 1e-3
    weight_decay: float = 0.0
    l2: float = 0.0  # L2 penalty on the classifier's kernels
    clipnorm: float = None  # global gradient-norm clipping
    augment: bool = True  # augmentation in the classifier stages (the policy's weak form)
    # named augmentation policy (data.augment.POLICIES); None: the data source's default
    # (digits: "digits", no flips and milder crops; other sources: "simclr")
    augmentation: str = None
    crop_scale: float = None  # override: smallest area fraction of a random crop
    flip: bool = None  # override: horizontal flips on / off
    jitter: float = None  # override: colour-jitter strength (0: none)
    warmup_fraction: float = 0.1
    early_stopping: int = None  # patience in epochs; None: run all epochs, keep the best
    bn_momentum: float = 0.9  # of every BatchNorm layer (Keras' default 0.99 lags in short runs)
    precise_bn_batches: int = 100  # BatchNorm statistics recomputed over N clean batches; 0: off
    val_fraction: float = 0.1
    seed: int = 0
    mixed_precision: bool = False
    strategy: str = "none"  # none | mirrored | multiworker (TensorFlow) | data-parallel (JAX)
    cache: bool = False
    out: str = None
    verbose: str = "auto"  # Keras fit verbosity: "auto" (progress bar), 0, 1 or 2

    @classmethod
    def from_dict(cls, d):
        """Settings from ``config.json``; settings of runs made before a setting existed
        mean what those runs did (no ``augmentation``: ``"simclr"``, the one policy
        then; no ``probe_fit``: ``probe_solver`` lbfgs -> ``"cached"``, otherwise the
        probe was trained on images)."""
        d = dict(d)
        d.setdefault("augmentation", "simclr")
        if "probe_fit" not in d:
            d["probe_fit"] = "cached" if d.get("probe_solver") == "lbfgs" else "images"
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self):
        """Check every setting that can be checked without data; fill in defaults."""
        spec = get_backbone(self.backbone)
        self.image_size = resolve_image_size(spec, self.image_size)
        normalize_weights(self.weights)
        check_choice(self.loss, LOSSES, "loss")
        if self.temperature is None and self.loss in DEFAULT_TEMPERATURE:
            self.temperature = DEFAULT_TEMPERATURE[self.loss]
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0; got {self.temperature}")
        if self.variant not in ("out", "in"):
            raise ConfigError(f"variant must be 'out' or 'in'; got {self.variant!r}")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        get_policy(self.augmentation or "simclr", crop_scale=self.crop_scale, flip=self.flip,
                   jitter=self.jitter)  # a bad name or override fails here
        check_strategy(self.strategy)
        self._validate_loss_settings()
        if self.loss in VIEW_LOSSES:
            check_contrastive_batch_size(self.batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        if self.views < 1 or (self.loss == "simclr" and self.views < 2):
            raise ConfigError(f"views must be >= 1 (>= 2 for simclr); got {self.views}")
        if self.loss == "barlow" and self.views != 2:
            raise ConfigError(f"Barlow Twins compares exactly two views of each image; "
                              f"got --views {self.views}")
        for name in ("epochs", "linear_epochs", "probe_epochs"):
            if getattr(self, name) < (1 if uses_setting(self.loss, name) else 0):
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("projection_dim", "head_hidden", "probe_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive width; got {getattr(self, name)}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0; got {self.l2}")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ConfigError(f"gradient clipping norm must be > 0; got {self.clipnorm}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"BatchNorm momentum must be in [0, 1); got {self.bn_momentum}")
        if self.precise_bn_batches < 0:
            raise ConfigError(f"precise-BN batches must be >= 0; got {self.precise_bn_batches}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early-stopping patience must be >= 1; got {self.early_stopping}")
        if self.out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = Path(str(self.dataset)).stem or "data"
            self.out = str(Path("runs") / f"{stamp}-{name}-{self.backbone}-{self.loss}")
        return self

    def _validate_loss_settings(self):
        check_choice(self.mining, MINING, "triplet mining")
        if self.margin < 0:
            raise ConfigError(f"triplet margin must be >= 0; got {self.margin}")
        if self.barlow_lambda < 0:
            raise ConfigError(f"barlow lambda must be >= 0; got {self.barlow_lambda}")
        if self.supcon_weight < 0:
            raise ConfigError(f"supcon weight must be >= 0; got {self.supcon_weight}")
        if self.center_weight < 0:
            raise ConfigError(f"center-loss weight must be >= 0; got {self.center_weight}")
        if not 0 < self.center_alpha <= 1:
            raise ConfigError(f"center update rate alpha must be in (0, 1]; "
                              f"got {self.center_alpha}")
        check_choice(self.probe, PROBES, "probe")
        check_choice(self.probe_fit, PROBE_FITS, "probe fit")


def augmentation_policies(config, data):
    """``(views policy, classifier-stage policy)`` of a run of ``config`` on ``data``:
    ``config.augmentation`` (default: ``data``'s source default) with its overrides."""
    policy = get_policy(augmentation_name(config, data), crop_scale=config.crop_scale,
                        flip=config.flip, jitter=config.jitter)
    return policy, policy.weak()


def augmentation_name(config, data):
    """The named policy of a run: ``config.augmentation``, or ``data``'s source default."""
    return config.augmentation or default_policy_name(data.name)


def augmentation_record(config, data):
    """``config.json["augmentation"]``: the policies spelled out beside the settings as
    given (``name``: the named policy, the data source's default when
    ``settings.augmentation`` is None)."""
    views, weak = augmentation_policies(config, data)
    return {"name": augmentation_name(config, data), "views": views.to_dict(),
            "classifier": weak.to_dict()}


def _clean_batches(config, data):
    """Un-augmented, shuffled training batches: what precise BatchNorm statistics are
    computed over."""
    return supervised_batches(data.train, config.image_size, config.batch_size, shuffle=True,
                              seed=config.seed, cache=config.cache,
                              num_examples=data.sizes["train"],
                              drop_remainder=config.strategy == "data-parallel")


def fit_stage(model, train, val, *, run, stage, config, loss, metrics, monitor, mode, epochs,
              lr, steps=None, extra_callbacks=(), precise_bn=None, loss_weights=None):
    """Compile and ``model.fit`` ``model`` as stage ``stage`` of ``run``: history,
    per-epoch checkpoints, the best epoch on ``monitor`` kept (also across
    ``--resume``), optional early stopping, then ``extra_callbacks``.

    ``train``: a tf.data dataset of batches (``steps`` per epoch; it shuffles
    itself), or ``(x, y)`` arrays, batched by ``config.batch_size`` and shuffled
    each epoch. ``precise_bn=(target, data)``: the BatchNorm statistics of
    ``target`` are recomputed over clean training batches before each validation
    pass and at the end (``config.precise_bn_batches``).
    """
    if isinstance(train, tuple):
        x, y = train
        steps = steps_per_epoch(len(x), config.batch_size)
        data_args = dict(x=x, y=y, batch_size=config.batch_size, shuffle=True)
    else:
        data_args = dict(x=train, shuffle=False)
    model.compile(
        optimizer=make_optimizer(config.optimizer, lr, total_steps=epochs * steps,
                                 weight_decay=config.weight_decay,
                                 warmup_fraction=config.warmup_fraction,
                                 clipnorm=getattr(config, "clipnorm", None)),
        loss=loss,
        loss_weights=loss_weights,
        metrics=metrics,
    )
    callbacks = stage_callbacks(run, stage, monitor=monitor, mode=mode, epochs=epochs,
                                patience=config.early_stopping) + list(extra_callbacks)
    calibrate = precise_bn is not None and config.precise_bn_batches > 0
    if calibrate:
        target, data = precise_bn
        clean = _clean_batches(config, data)
        callbacks.insert(0, PreciseBatchNorm(target, clean, config.precise_bn_batches))
    log.info("stage %s: %d epochs of %d steps", stage, epochs, steps)
    model.fit(**data_args, validation_data=val, epochs=epochs, callbacks=callbacks,
              verbose=config.verbose)
    if calibrate:  # the weights kept (best epoch) with statistics of their own
        precise_batchnorm(target, clean, max_batches=config.precise_bn_batches)


def _pretrain(config, data, run, encoder):
    n_train, n_val = data.sizes["train"], data.sizes["val"]
    kw = dict(views=config.views, cache=config.cache, policy=augmentation_policies(config, data)[0])
    train_ds = contrastive_batches(data.train, config.image_size, config.batch_size,
                                   shuffle=True, seed=config.seed, num_examples=n_train, **kw)
    val_batch = min(config.batch_size, n_val)
    val_ds = (contrastive_batches(data.val, config.image_size, val_batch, shuffle=False,
                                  num_examples=n_val, **kw) if val_batch >= 2 else None)
    features = encoder.output_shape[-1]
    if LOSS_SPECS[config.loss].head == "barlow":
        head = build_barlow_projector(features, config.head_hidden, config.projection_dim)
    else:
        head = build_projection_head(features, config.head_hidden, config.projection_dim)
    set_batchnorm_momentum(head, config.bn_momentum)
    model = build_contrastive_model(encoder, head, views=config.views)
    # The Barlow projector has BatchNorm too: its statistics (and the encoder's) are
    # recomputed through encoder + head on clean images (shared layers).
    target = (keras.Model(encoder.inputs, head(encoder.outputs[0]), name="encoder_and_head")
              if batchnorm_layers(head) else encoder)
    fit_stage(model, train_ds, val_ds, loss=build_pretraining_loss(config), metrics=None,
              run=run, stage="pretrain", epochs=config.epochs, lr=config.lr,
              steps=steps_per_epoch(n_train, config.batch_size, True),
              monitor="val_loss" if val_ds is not None else "loss", mode="min", config=config,
              precise_bn=(target, data))


def center_loss_model(classifier, num_classes, weight, alpha):
    """``classifier`` (from :func:`build_classifier`) with a :class:`CenterLoss` on its
    encoder features: ``(images, labels) -> probabilities``, for ``model.fit`` on
    ``((images, labels), labels)``. It shares every layer with ``classifier``."""
    images = keras.Input(classifier.input_shape[1:], name="images")
    labels = keras.Input((), dtype="int32", name="labels")
    layers = classifier.layers[1:]  # encoder, [hidden], [dropout], probabilities
    x = layers[0](images)
    x = CenterLoss(num_classes, weight=weight, alpha=alpha, name="center_loss")([x, labels])
    for layer in layers[1:]:
        x = layer(x)
    return keras.Model([images, labels], x, name="center_loss_classifier")


def _labels_as_input(ds):
    return ds.map(lambda x, y: ((x, tf.cast(y, tf.int32)), y))


def train_classifier(config, data, run, classifier, stage, epochs, lr, extra_callbacks=()):
    """Cross-entropy training of ``classifier`` as stage ``stage`` of ``run`` (train split
    augmented unless ``config.augment`` is off, best validation-accuracy epoch kept;
    settings from ``config``; ``config.loss == "center"`` adds the center loss)."""
    n_train = data.sizes["train"]
    # keras.distribution shards every batch evenly over the devices: no partial batches.
    whole = config.strategy == "data-parallel"
    train_ds = supervised_batches(data.train, config.image_size, config.batch_size,
                                  augment=config.augment,
                                  policy=augmentation_policies(config, data)[1], shuffle=True,
                                  seed=config.seed,
                                  cache=config.cache, num_examples=n_train,
                                  drop_remainder=whole)
    val_ds = supervised_batches(data.val, config.image_size, config.batch_size,
                                cache=config.cache, drop_remainder=whole)
    inference_model = classifier  # images -> probabilities
    if config.loss == "center" and stage == "ce":
        classifier = center_loss_model(classifier, data.num_classes, config.center_weight,
                                       config.center_alpha)
        train_ds, val_ds = _labels_as_input(train_ds), _labels_as_input(val_ds)
    # A frozen encoder's BatchNorm does not train: its statistics were made precise before.
    trains_bn = any(layer.trainable for layer in batchnorm_layers(classifier))
    fit_stage(classifier, train_ds, val_ds, loss="sparse_categorical_crossentropy",
              metrics=["accuracy"], run=run, stage=stage, epochs=epochs, lr=lr,
              steps=steps_per_epoch(n_train, config.batch_size, whole),
              monitor="val_accuracy", mode="max", config=config,
              extra_callbacks=extra_callbacks,
              precise_bn=(inference_model, data) if trains_bn else None)


def train_joint(config, data, run, classifier, encoder):
    """Stage ``ce`` of ``--loss supcon+ce``: the encoder, the projection head and the
    softmax of ``classifier`` trained together on augmented views, CE on every view +
    ``supcon_weight`` x SupCon; validation (and the best epoch) on clean images."""
    n_train = data.sizes["train"]
    views_policy, _ = augmentation_policies(config, data)
    train_ds = contrastive_batches(data.train, config.image_size, config.batch_size,
                                   views=config.views, policy=views_policy, shuffle=True,
                                   seed=config.seed, cache=config.cache,
                                   num_examples=n_train).map(joint_targets)
    views = config.views
    val_ds = supervised_batches(data.val, config.image_size, config.batch_size,
                                cache=config.cache,
                                drop_remainder=config.strategy == "data-parallel").map(
        lambda x, y: joint_targets(tf.stack([x] * views, axis=1), y))
    head = build_projection_head(encoder.output_shape[-1], config.head_hidden,
                                 config.projection_dim)
    model = build_joint_model(encoder, head, classifier, views=views)
    args = joint_loss(supcon_weight=config.supcon_weight, temperature=config.temperature,
                      variant=config.variant)
    fit_stage(model, train_ds, val_ds, loss=args["loss"], metrics=args["metrics"], run=run,
              stage="ce", epochs=config.epochs, lr=config.lr,
              steps=steps_per_epoch(n_train, config.batch_size, True),
              monitor="val_probabilities_accuracy", mode="max", config=config,
              precise_bn=(encoder, data), loss_weights=args["loss_weights"])


def train(config=None, *, resume=False, overwrite=False, **settings):
    """Run the whole job and return the test metrics (also in ``RUN_DIR/metrics.json``).

    ``train(TrainConfig(...))`` or ``train(backbone="resnet50", epochs=2, ...)``.
    ``resume=True`` continues the run in ``config.out`` with its saved settings.
    """
    config = dataclasses.replace(config or TrainConfig(), **settings)
    config, run = open_run(config, resume=resume, overwrite=overwrite)
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF work.
    started = time.time()
    with distribution_scope(config.strategy) as replicas:
        check_global_batch(config.batch_size, replicas)
        data, encoder, classifier = _train_stages(config, run, resume)
    # Evaluation and export run outside the strategy, on this process's devices.
    with process_local(classifier) as classifier:
        encoder = classifier.get_layer(encoder.name)
        metrics = evaluate_run(config, data, run, classifier, encoder)
    metrics["wall_time_s"] = round(time.time() - started, 1)
    metrics["replicas"] = replicas
    metrics["run_dir"] = str(run.path)
    run.write_json("metrics.json", metrics)
    run.mark_finished()
    return metrics


def _train_stages(config, run, resume):
    """Pre-training and classifier stages (those not done yet); returns
    ``(data, encoder, classifier)``."""
    # Data errors surface before a new run writes anything.
    data = load_dataset(config.dataset, data_dir=config.data_dir,
                        val_fraction=config.val_fraction, seed=config.seed)
    log.info("data %s", data.describe())
    if config.loss in VIEW_LOSSES:
        check_contrastive_batch_size(config.batch_size, data.sizes["train"])
    if not resume:
        run.start(asdict(config), augmentation=augmentation_record(config, data))

    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(precision_policy(config.mixed_precision))

    if config.loss in END_TO_END_LOSSES:
        classifier = run.stage("ce", lambda: _train_end_to_end(config, data, run),
                               "classifier.keras")
        return data, classifier.get_layer(f"encoder_{config.backbone}"), classifier

    def pretrain():
        encoder = _new_encoder(config)
        _pretrain(config, data, run, encoder)
        return encoder

    encoder = None  # once the probe is done, the classifier holds the encoder
    if not run.stage_done("linear"):
        encoder = run.stage("pretrain", pretrain, "encoder.keras")
    classifier = run.stage("linear", lambda: _train_probe(config, data, run, encoder),
                           "classifier.keras")
    return data, classifier.get_layer(f"encoder_{config.backbone}"), classifier


def _train_end_to_end(config, data, run):
    """Stage ``ce``: the classifier trained end to end (CE, center loss, or CE + SupCon);
    its encoder is saved as ``encoder.keras`` too."""
    encoder = _new_encoder(config)
    classifier = build_classifier(encoder, data.num_classes, l2=config.l2)
    if config.loss == "supcon+ce":
        train_joint(config, data, run, classifier, encoder)
    else:
        train_classifier(config, data, run, classifier, "ce", config.epochs, config.lr)
    run.save_model(encoder, "encoder.keras")
    return classifier


def _new_encoder(config):
    encoder = build_encoder(config.backbone, config.image_size, config.weights)
    return set_batchnorm_momentum(encoder, config.bn_momentum)


def _train_probe(config, data, run, encoder):
    """Stage ``linear``: the ``config.probe`` classifier on the frozen ``encoder``
    (on this process's devices when there are several processes)."""
    with process_local(encoder) as encoder:
        return _fit_probe(config, data, run, encoder)


def _fit_probe(config, data, run, encoder):
    freeze(encoder)
    classifier = build_classifier(encoder, data.num_classes, l2=config.l2,
                                  hidden=config.probe_hidden if config.probe == "nn" else None)
    if config.probe_fit == "cached":
        if config.probe == "linear":
            report = fit_linear_probe(classifier, encoder, data, config.image_size,
                                      verbose=config.verbose)
        else:
            report = fit_mlp_probe(classifier, encoder, data, config.image_size,
                                   epochs=config.probe_epochs, lr=config.linear_lr,
                                   batch_size=config.batch_size, seed=config.seed,
                                   verbose=config.verbose)
        write_history(run, read_history(run) + [
            {"stage": "linear", "epoch": i + 1, **row} for i, row in enumerate(report["grid"])])
        run.write_json(PROBE_FILE, report)
    else:
        train_classifier(config, data, run, classifier, "linear", config.linear_epochs,
                         config.linear_lr)
    return classifier


def fine_tune_linear(encoder, data="digits", *, out=None, overwrite=False, **settings):
    """A linear softmax classifier on the frozen pre-trained ``encoder``.

    ``encoder``: a Keras model (or ``.keras`` file) mapping raw images ``[B, S, S, 3]``
    in [0, 255] to features, e.g. a run's ``encoder.keras``. ``data``: a
    :class:`~keras_supcon.data.DataSplits` or a ``--dataset`` string. ``settings``:
    :class:`TrainConfig` fields (``linear_epochs``, ``linear_lr``, ``batch_size``,
    ``l2``, ``early_stopping``, ...). Trains into run directory ``out`` (default: a
    new folder under ``runs/``) and returns ``(classifier, test metrics)``.
    """
    return _fine_tune(encoder, data, "linear", out, overwrite, settings)


def fine_tune_nn(encoder, data="digits", *, hidden=512, out=None, overwrite=False, **settings):
    """:func:`fine_tune_linear` with one hidden ReLU layer of width ``hidden`` (an MLP probe)."""
    return _fine_tune(encoder, data, "nn", out, overwrite, dict(settings, probe_hidden=hidden))


def _fine_tune(encoder, data, probe, out, overwrite, settings):
    if not isinstance(encoder, keras.Model):
        encoder = keras.models.load_model(encoder)
    size = encoder.input_shape[1]
    if len(encoder.input_shape) != 4 or encoder.input_shape[-1] != 3 or size is None:
        raise ConfigError(f"the encoder must take images [B, S, S, 3]; it takes "
                          f"{encoder.input_shape}")
    config = TrainConfig(**{**settings, "loss": "supcon", "probe": probe, "image_size": None})
    config.out = out or str(Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-fine-tune-{probe}")
    config.validate()
    config.image_size = int(size)  # the encoder's, whatever its backbone
    if not isinstance(data, DataSplits):
        data = load_dataset(data, data_dir=config.data_dir, val_fraction=config.val_fraction,
                            seed=config.seed)
    run = RunDir.prepare(config.out, overwrite=overwrite)
    run.start(asdict(config), augmentation=augmentation_record(config, data))
    keras.utils.set_random_seed(config.seed)
    classifier = run.stage("linear", lambda: _train_probe(config, data, run, encoder),
                           "classifier.keras")
    probs, labels = predict(classifier, supervised_batches(data.test, config.image_size, 256),
                            config.verbose)
    metrics = classification_metrics(labels, probs, data.class_names)
    metrics.update(dataset=data.name, probe=probe, run_dir=str(run.path))
    run.write_json("metrics.json", metrics)
    run.mark_finished()
    return classifier, metrics


def evaluate_run(config, data, run, classifier, encoder):
    """Test metrics, figures and SavedModel export of a trained classifier."""
    test_ds = supervised_batches(data.test, config.image_size, 256)
    probs, labels = predict(classifier, test_ds, config.verbose)
    metrics = classification_metrics(labels, probs, data.class_names)
    metrics.update(dataset=data.name, backbone=config.backbone, loss=config.loss,
                   split_sizes=data.sizes)
    if run.file(PROBE_FILE).exists():
        probe = run.read_json(PROBE_FILE)
        metrics["probe"] = {k: probe[k] for k in ("protocol", "C", "epoch", "val_accuracy")
                            if k in probe}
    title = (f"{data.name} | {config.backbone} | {config.loss} | "
             f"test accuracy {metrics['accuracy']:.3f}")

    run.save_figure(plot_curves(read_history(run), title), "curves.png")
    embeddings, emb_labels = predict(encoder, test_ds, config.verbose)
    train_emb, train_labels = predict(
        encoder, supervised_batches(data.train, config.image_size, 256), config.verbose)
    metrics["embedding"] = embedding_metrics(train_emb, train_labels, embeddings, emb_labels)
    points, point_labels = tsne_embedding(embeddings, emb_labels, max_per_class=500,
                                          seed=config.seed)
    run.save_figure(plot_tsne(points, point_labels, data.class_names,
                              f"t-SNE of test encoder embeddings\n{title}"), "tsne.png")
    run.save_figure(plot_confusion(metrics["confusion_matrix"], data.class_names,
                                   f"Confusion matrix (test)\n{title}"), "confusion.png")

    with run.atomic_path("saved_model") as tmp:
        export_saved_model(classifier, tmp)
    sample = next(iter(test_ds))[0][:32]
    diff = check_saved_model(run.file("saved_model"), classifier, sample)
    metrics["saved_model_max_abs_diff"] = diff
    if not diff < 1e-4:
        raise RuntimeError(f"exported SavedModel disagrees with the classifier (max |diff| {diff})")
    return metrics
