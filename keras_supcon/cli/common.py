"""What the command-line tools share: one-line errors, the training options, config files.

The tools only parse arguments and call the library; user errors raised by the
library (:class:`~keras_supcon.errors.KerasSupconError`) become one
``error: ...`` line and exit status 2, Ctrl-C exit status 130.
"""

import argparse
import sys
import tomllib

from keras_supcon._launch import SCRIPT_PREFIX, launched_module


def command_name(job):
    """The command as the user typed it, for usage lines: ``python -m MODULE`` when
    started that way, else the console script ``keras-supcon-<job>``."""
    module = launched_module()
    return f"python -m {module}" if module else SCRIPT_PREFIX + job.replace("_", "-")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def run_reporting_errors(job, interrupted_hint):
    """``job()``'s result, or the exit status after one ``error:`` / interrupted line."""
    from keras_supcon.errors import KerasSupconError

    try:
        return job()
    except KerasSupconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_hint}", file=sys.stderr)
        return 130


def verbosity(text):
    return text if text == "auto" else int(text)


def add_training_arguments(p, *, single_run=True):
    """The options of :class:`~keras_supcon.training.TrainConfig`, in groups.

    ``single_run=False`` (the ablation) leaves out ``--backbone`` and ``--loss``,
    which the caller replaces by lists.
    """
    from keras_supcon.data.augment import POLICIES
    from keras_supcon.losses.triplet import MINING
    from keras_supcon.models.backbones import BACKBONES
    from keras_supcon.training.distribute import STRATEGIES
    from keras_supcon.training.run import LOSSES, PROBE_FITS, PROBES, TrainConfig

    d = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset,
                      help="digits | a TFDS name (cifar10, cifar100, stl10, ...) | "
                           "a .npz file (x_train, y_train, x_test, y_test) | a folder of "
                           "class sub-folders")
    data.add_argument("--data-dir", default=None, help="TFDS data directory")
    data.add_argument("--image-size", type=int, default=None,
                      help="input height = width (default: the backbone's; "
                           "inception* need >= 75)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="part of the training data held out for validation")
    data.add_argument("--cache", action="store_true", help="cache resized images in memory")
    model = p.add_argument_group("model")
    if single_run:
        model.add_argument("--backbone", default=d.backbone, choices=list(BACKBONES),
                           metavar="{" + ",".join(BACKBONES) + "}")
    model.add_argument("--weights", default=d.weights,
                       help="none | imagenet (needs the network) | PATH of a weights file")
    model.add_argument("--projection-dim", type=int, default=d.projection_dim,
                       help="output width of the projection head (barlow: of the projector)")
    model.add_argument("--head-hidden", type=int, default=d.head_hidden,
                       help="hidden width of the projection head (barlow: of the projector's "
                            "two hidden layers; the paper uses 8192 for both widths)")
    model.add_argument("--probe", default=d.probe, choices=PROBES,
                       help="classifier on the frozen pre-trained encoder: linear softmax, or "
                            "nn (one hidden ReLU layer of --probe-hidden units)")
    model.add_argument("--probe-hidden", type=int, default=d.probe_hidden)
    model.add_argument("--probe-fit", default=d.probe_fit, choices=PROBE_FITS,
                       help="cached: the frozen encoder's features extracted once, the "
                            "linear probe fitted by L-BFGS logistic regression (L2 strength "
                            "chosen on validation), the nn probe by Adam for --probe-epochs; "
                            "images: model.fit on augmented images for --linear-epochs")
    model.add_argument("--probe-epochs", type=int, default=d.probe_epochs,
                       help="nn probe on cached features: epochs (best validation kept)")
    train = p.add_argument_group("training")
    if single_run:
        train.add_argument("--loss", default=d.loss, choices=LOSSES,
                           help="pre-training loss (supcon, simclr, npairs, triplet, barlow: "
                                "then a probe on the frozen encoder), or an end-to-end one: "
                                "ce (cross-entropy), center (cross-entropy + center loss), "
                                "supcon+ce (cross-entropy + --supcon-weight x SupCon)")
    train.add_argument("--temperature", type=float, default=None,
                       help="default 0.1 (supcon, simclr, supcon+ce), 0.05 (npairs)")
    train.add_argument("--supcon-weight", type=float, default=d.supcon_weight,
                       help="supcon+ce: w in CE + w * SupCon")
    train.add_argument("--variant", default=d.variant, choices=("out", "in"),
                       help="SupCon eq. 2 (out) or eq. 3 (in)")
    train.add_argument("--margin", type=float, default=d.margin, help="triplet margin")
    train.add_argument("--mining", default=d.mining, choices=MINING,
                       help="triplet mining: semi-hard (FaceNet), batch-hard, all valid triplets, "
                            "or random")
    train.add_argument("--squared-distance", action="store_true",
                       help="triplet on squared Euclidean distances")
    train.add_argument("--barlow-lambda", type=float, default=d.barlow_lambda,
                       help="Barlow Twins weight of the off-diagonal (redundancy) term")
    train.add_argument("--center-weight", type=float, default=d.center_weight,
                       help="center: lambda in CE + lambda * center loss")
    train.add_argument("--center-alpha", type=float, default=d.center_alpha,
                       help="center: update rate of the class centres, in (0, 1]")
    train.add_argument("--views", type=int, default=d.views,
                       help="augmented views per image (barlow: 2)")
    train.add_argument("--epochs", type=int, default=d.epochs,
                       help="pre-training epochs (ce: training epochs)")
    train.add_argument("--linear-epochs", type=int, default=d.linear_epochs)
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--optimizer", default=d.optimizer, choices=("adam", "sgd"))
    train.add_argument("--lr", type=float, default=d.lr,
                       help="peak learning rate (linear warm-up, then cosine decay)")
    train.add_argument("--linear-lr", type=float, default=d.linear_lr)
    train.add_argument("--weight-decay", type=float, default=d.weight_decay)
    train.add_argument("--l2", type=float, default=d.l2,
                       help="L2 penalty on the classifier's kernels (l2 * sum w^2)")
    train.add_argument("--clipnorm", type=float, default=None,
                       help="clip the gradients to this global L2 norm")
    aug = p.add_argument_group("augmentation")
    aug.add_argument("--augmentation", default=None, choices=list(POLICIES),
                     help="named policy of the views (the classifier stages use its crops "
                          "and flips only); default: the data source's (digits: digits, "
                          "no flips and milder crops; otherwise simclr)")
    aug.add_argument("--crop-scale", type=float, default=None, metavar="MIN_AREA",
                     help="override: smallest area fraction of a random crop, in (0, 1]")
    aug.add_argument("--flip", dest="flip", action="store_true", default=None,
                     help="override: random horizontal flips on")
    aug.add_argument("--no-flip", dest="flip", action="store_false",
                     help="override: no horizontal flips")
    aug.add_argument("--jitter", type=float, default=None, metavar="S",
                     help="override: colour-jitter strength (brightness, contrast, "
                          "saturation S, hue S/4; 0: none)")
    aug.add_argument("--no-augment", dest="augment", action="store_false",
                     help="no augmentation in the classifier stages (ce, center, a probe "
                          "fitted on images; supcon+ce always trains on augmented views)")
    train.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    train.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop a stage after PATIENCE epochs without validation "
                            "improvement (the best epoch is always kept)")
    train.add_argument("--bn-momentum", type=float, default=d.bn_momentum,
                       help="momentum of every BatchNorm layer's moving statistics "
                            "(Keras' default is 0.99, tuned for long runs)")
    train.add_argument("--precise-bn-batches", type=int, default=d.precise_bn_batches,
                       metavar="N",
                       help="recompute BatchNorm statistics over N clean training batches "
                            "before each validation and after each stage that trains "
                            "BatchNorm (0: off)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--mixed-precision", action="store_true")
    train.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
                       help="several devices: mirrored (all GPUs here) on TensorFlow, "
                            "data-parallel (keras.distribution, also across machines) on "
                            "JAX; multiworker is blocked upstream (keras-team/keras#20585); "
                            "--batch-size is the global batch")
    return p


def apply_config_file(parser, argv):
    """Defaults of ``parser`` from the TOML file named by ``--config`` in ``argv``.

    Keys are option names (``batch-size`` or ``batch_size``); options given on
    the command line win. An unknown key is an error naming it.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return {}
    try:
        with open(known.config, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        parser.error(f"--config {known.config}: no such file")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config {known.config}: not valid TOML ({exc})")
    dests = {a.dest for a in parser._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        parser.error(f"--config {known.config}: unknown setting(s) {', '.join(unknown)}")
    parser.set_defaults(**values)
    return values
