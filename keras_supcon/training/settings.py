"""Every setting of a training run, once: :class:`TrainConfig`.

Each field is a :func:`~keras_supcon.runs.settings.setting`: its default, type (the
annotation), help text, choices and command-line group. The command-line options
(``cli.common``), the ablation's ``--grid`` parsing
(:func:`~keras_supcon.runs.settings.parse_setting`), ``config.json`` and
:meth:`TrainConfig.validate` all read these fields, so adding a setting is adding
one field (and its check in ``validate``).
"""

import dataclasses
import logging
from dataclasses import dataclass

from keras_supcon.data import load_dataset
from keras_supcon.data.augment import POLICIES, default_policy_name, get_policy
from keras_supcon.data.pipeline import check_contrastive_batch_size
from keras_supcon.errors import ConfigError, check_choice
from keras_supcon.losses.registry import END_TO_END, PRETRAIN, loss_names, uses_setting
from keras_supcon.losses.registry import LOSSES as LOSS_SPECS
from keras_supcon.losses.supcon import VARIANTS
from keras_supcon.losses.triplet import MINING
from keras_supcon.models.backbones import (
    BACKBONES,
    get_backbone,
    normalize_weights,
    resolve_image_size,
)
from keras_supcon.runs.rundir import default_run_dir
from keras_supcon.runs.settings import VERBOSITY, check_verbosity, setting
from keras_supcon.training.distribute import STRATEGIES, check_strategy
from keras_supcon.training.optim import OPTIMIZERS

log = logging.getLogger(__name__)

LOSS_NAMES = tuple(LOSS_SPECS)  # the registry (losses.LOSSES) names every loss
END_TO_END_LOSSES = loss_names(END_TO_END)  # one cross-entropy stage
PRETRAIN_LOSSES = loss_names(PRETRAIN)  # pre-training, then a probe on the frozen encoder
VIEW_LOSSES = loss_names(views=True)  # trained on augmented views of each image
DEFAULT_TEMPERATURE = {n: s.temperature for n, s in LOSS_SPECS.items() if s.temperature}
# --epochs by the loss's kind, chosen on the validation split of digits over 3 seeds
# (experiments/defaults_search.py, docs/experiments.md): 5 epochs of pre-training, after which
# the probe is fitted to convergence; an end-to-end classifier learns only in its epochs, and
# 5 left cross-entropy under-trained (train accuracy 0.96 and rising, test accuracy at the
# raw-pixel baseline).
DEFAULT_EPOCHS = {PRETRAIN: 5, END_TO_END: 20}
DEFAULT_LR = 1e-3  # a backbone's registry entry may change it (BackboneSpec.defaults)
PROBES = ("linear", "nn")
PROBE_FITS = ("cached", "images")


@dataclass
class TrainConfig:
    """Every setting of a run (written to ``config.json``)."""

    dataset: str = setting(
        "digits", "digits | a TFDS name (cifar10, cifar100, stl10, ...) | a .npz file "
        "(x_train, y_train, x_test, y_test) | a folder of class sub-folders", group="data")
    data_dir: str | None = setting(None, "TFDS data directory", group="data")
    image_size: int | None = setting(
        None, "input height = width (default: the backbone's; inception* need >= 75)",
        group="data")
    val_fraction: float = setting(0.1, "part of the training data held out for validation",
                                  group="data")
    cache: bool = setting(False, "cache resized images in memory", group="data")
    backbone: str = setting("small_resnet", "the encoder's network (models.BACKBONES)",
                            group="model", choices=tuple(BACKBONES))
    weights: str = setting("none", "none | imagenet (needs the network) | PATH of a weights file",
                           group="model")
    projection_dim: int = setting(128, "output width of the projection head (barlow: of the "
                                       "projector)", group="model")
    head_hidden: int = setting(
        512, "hidden width of the projection head (barlow: of the projector's two hidden "
             "layers; the paper uses 8192 for both widths)", group="model")
    probe: str = setting("linear", "classifier on the frozen pre-trained encoder: linear "
                                   "softmax, or nn (one hidden ReLU layer of --probe-hidden "
                                   "units)", group="model", choices=PROBES)
    probe_hidden: int = setting(512, "width of the nn probe's hidden layer", group="model")
    probe_fit: str = setting(
        "cached", "cached: the frozen encoder's features extracted once, the linear probe "
                  "fitted by L-BFGS logistic regression (L2 strength chosen on validation), "
                  "the nn probe by Adam for --probe-epochs (best validation epoch kept); "
                  "images: model.fit on augmented images for --linear-epochs",
        group="model", choices=PROBE_FITS)
    probe_epochs: int = setting(100, "nn probe on cached features: epochs (best validation "
                                     "kept)", group="model")
    probe_refit: bool = setting(False, "linear probe on cached features: once C is chosen on "
                                       "validation, fit it again on train + validation",
                                group="model")
    loss: str = setting(
        "supcon", "pre-training loss (supcon, simclr, npairs, triplet, barlow: then a probe on "
                  "the frozen encoder), or an end-to-end one: ce (cross-entropy), center "
                  "(cross-entropy + center loss), supcon+ce (cross-entropy + --supcon-weight x "
                  "SupCon)", choices=LOSS_NAMES)
    temperature: float | None = setting(None, "default 0.1 (supcon, simclr, supcon+ce), 0.05 "
                                              "(npairs, as the Keras tutorial)")
    supcon_weight: float = setting(1.0, "supcon+ce: w in CE + w * SupCon")
    variant: str = setting("out", "SupCon eq. 2 (out) or eq. 3 (in)", choices=VARIANTS)
    margin: float = setting(0.2, "triplet margin")
    mining: str = setting("semihard", "triplet mining: semi-hard (FaceNet), batch-hard, all "
                                      "valid triplets, or random", choices=MINING)
    squared_distance: bool = setting(False, "triplet on squared Euclidean distances")
    barlow_lambda: float = setting(5e-3, "Barlow Twins weight of the off-diagonal (redundancy) "
                                         "term")
    center_weight: float = setting(0.003, "center: lambda in CE + lambda * center loss")
    center_alpha: float = setting(0.5, "center: update rate of the class centres, in (0, 1]")
    views: int = setting(2, "augmented views per image (barlow: 2)")
    epochs: int | None = setting(
        None, "pre-training epochs (pre-training losses, default 5; resnet50: 20, "
              "inceptionv3: 10), or training epochs of the classifier (end-to-end losses, "
              "default 20; resnet50: 40)")
    linear_epochs: int = setting(5, "probe fitted on images: epochs")
    batch_size: int = setting(64, "global batch size (images; each brings --views views)")
    optimizer: str = setting("adam", "optimizer of every stage", choices=OPTIMIZERS)
    lr: float | None = setting(None, "peak learning rate (linear warm-up, then cosine decay); "
                                     "default 1e-3 (pre-training resnet50, inceptionv3: 3e-3)")
    linear_lr: float = setting(1e-3, "learning rate of the probe (nn probe, or fitted on "
                                     "images)")
    weight_decay: float = setting(0.0, "decoupled weight decay of the optimizer")
    l2: float = setting(0.0, "L2 penalty on the classifier's kernels (l2 * sum w^2)")
    clipnorm: float | None = setting(None, "clip the gradients to this global L2 norm")
    warmup_fraction: float = setting(0.1, "part of a stage's steps with a linear warm-up")
    early_stopping: int | None = setting(
        None, "stop a stage after PATIENCE epochs without validation improvement (the best "
              "epoch is always kept)", metavar="PATIENCE")
    bn_momentum: float = setting(0.9, "momentum of every BatchNorm layer's moving statistics "
                                      "(Keras' default is 0.99, tuned for long runs)")
    precise_bn_batches: int = setting(
        100, "recompute BatchNorm statistics over N clean training batches before each "
             "validation and after each stage that trains BatchNorm (0: off)", metavar="N")
    seed: int = setting(0, "seed of the weights, the split's shuffling and the augmentation")
    mixed_precision: bool = setting(False, "mixed precision (bfloat16 on CPU, float16 on GPU)")
    strategy: str = setting(
        "none", "several devices: mirrored (all GPUs here) on TensorFlow, data-parallel "
                "(keras.distribution, also across machines) on JAX; multiworker is blocked "
                "upstream (keras-team/keras#20585); --batch-size is the global batch",
        choices=STRATEGIES)
    augment: bool = setting(True, "augmentation in the classifier stages (ce, center, a probe "
                                  "fitted on images; supcon+ce always trains on augmented "
                                  "views)", group="augmentation")
    augmentation: str | None = setting(
        None, "named policy of the views (the classifier stages use its crops and flips "
              "only); default: the data source's (digits: digits, no flips and milder crops; "
              "otherwise simclr)", group="augmentation", choices=tuple(POLICIES))
    crop_scale: float | None = setting(None, "override: smallest area fraction of a random "
                                             "crop, in (0, 1]", group="augmentation",
                                       metavar="MIN_AREA")
    flip: bool | None = setting(None, "override: random horizontal flips on / off",
                                group="augmentation")
    jitter: float | None = setting(None, "override: colour-jitter strength (brightness, "
                                         "contrast, saturation S, hue S/4; 0: none)",
                                   group="augmentation", metavar="S")
    out: str | None = setting(None, "RUN_DIR (default: a new folder under runs/ named after "
                                    "the time, the data and the job)", group="run directory")
    verbose: str = setting("auto", "Keras progress output (auto: progress bars)",
                           group="run directory", choices=VERBOSITY)

    @classmethod
    def from_dict(cls, d):
        """Settings from ``config.json``; settings of runs made before a setting existed
        mean what those runs did (no ``augmentation``: ``"simclr"``, the one policy
        then; no ``bn_momentum``: Keras' 0.99, with no precise BatchNorm; no
        ``probe_fit``: ``probe_solver`` lbfgs -> ``"cached"``, otherwise the probe was
        trained on images)."""
        d = dict(d)
        d.setdefault("augmentation", "simclr")
        d.setdefault("bn_momentum", 0.99)
        d.setdefault("precise_bn_batches", 0)
        if "probe_fit" not in d:
            d["probe_fit"] = "cached" if d.get("probe_solver") == "lbfgs" else "images"
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self):
        """Check every setting that can be checked without data; fill in defaults."""
        self.image_size = resolve_image_size(get_backbone(self.backbone), self.image_size)
        normalize_weights(self.weights)
        for name in ("loss", "optimizer", "variant", "mining", "probe", "probe_fit"):
            check_choice(getattr(self, name), _field(name).metadata["choices"],
                         name.replace("_", " "))
        self._fill_defaults()
        get_policy(self.augmentation or "simclr", crop_scale=self.crop_scale, flip=self.flip,
                   jitter=self.jitter)  # a bad name or override fails here
        check_strategy(self.strategy)
        self._check_numbers()
        if self.loss in VIEW_LOSSES:
            check_contrastive_batch_size(self.batch_size)
        if self.views < 1 or (self.loss == "simclr" and self.views < 2):
            raise ConfigError(f"views must be >= 1 (>= 2 for simclr); got {self.views}")
        if self.probe_refit and (self.probe, self.probe_fit) != ("linear", "cached"):
            raise ConfigError(f"--probe-refit refits the linear probe on cached features "
                              f"(its C chosen on validation); this run's probe is "
                              f"{self.probe} fitted on {self.probe_fit}")
        if self.loss == "barlow" and self.views != 2:
            raise ConfigError(f"Barlow Twins compares exactly two views of each image; "
                              f"got --views {self.views}")
        for name in ("epochs", "linear_epochs", "probe_epochs"):
            if getattr(self, name) < (1 if uses_setting(self.loss, name) else 0):
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        self.verbose = check_verbosity(self.verbose)
        if self.out is None:
            self.out = str(default_run_dir(self.dataset, self.backbone, self.loss))
        return self

    def _fill_defaults(self):
        """The loss's temperature, the epochs by the loss's kind and the learning rate,
        unless given; the backbone's own values for the loss's kind where the registry has
        some (``BackboneSpec.defaults``)."""
        if self.temperature is None and self.loss in DEFAULT_TEMPERATURE:
            self.temperature = DEFAULT_TEMPERATURE[self.loss]
        kind = LOSS_SPECS[self.loss].kind
        own = get_backbone(self.backbone).defaults_for(kind)
        if self.epochs is None:
            self.epochs = own.get("epochs", DEFAULT_EPOCHS[kind])
        if self.lr is None:
            self.lr = own.get("lr", DEFAULT_LR)

    def _check_numbers(self):
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        for name in ("projection_dim", "head_hidden", "probe_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive width; got {getattr(self, name)}")
        for name, what in (("temperature", "temperature"), ("clipnorm", "gradient clipping norm")):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{what} must be > 0; got {value}")
        for name in ("margin", "barlow_lambda", "supcon_weight", "center_weight", "l2",
                     "precise_bn_batches"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 0; "
                                  f"got {getattr(self, name)}")
        if not 0 < self.center_alpha <= 1:
            raise ConfigError(f"center update rate alpha must be in (0, 1]; "
                              f"got {self.center_alpha}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"BatchNorm momentum must be in [0, 1); got {self.bn_momentum}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early-stopping patience must be >= 1; got {self.early_stopping}")


def _field(name):
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def augmentation_name(config, data):
    """The named policy of a run: ``config.augmentation``, or ``data``'s source default."""
    return config.augmentation or default_policy_name(data.name)


def augmentation_policies(config, data):
    """``(views policy, classifier-stage policy)`` of a run of ``config`` on ``data``:
    ``config.augmentation`` (default: ``data``'s source default) with its overrides."""
    policy = get_policy(augmentation_name(config, data), crop_scale=config.crop_scale,
                        flip=config.flip, jitter=config.jitter)
    return policy, policy.weak()


def augmentation_record(config, data):
    """``config.json["augmentation"]``: the policies spelled out beside the settings as
    given (``name``: the named policy, the data source's default when
    ``settings.augmentation`` is None)."""
    views, weak = augmentation_policies(config, data)
    return {"name": augmentation_name(config, data), "views": views.to_dict(),
            "classifier": weak.to_dict()}


def load_data(config):
    """The :class:`~keras_supcon.data.DataSplits` a job's settings name (``dataset``,
    ``data_dir``, ``val_fraction``, ``seed``); data errors surface before a run writes."""
    data = load_dataset(config.dataset, data_dir=config.data_dir,
                        val_fraction=config.val_fraction, seed=config.seed)
    log.info("data %s", data.describe())
    return data
