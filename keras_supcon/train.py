"""Command line: ``python -m keras_supcon.train --backbone densenet201 [options]``.

Runs SupCon pre-training, linear evaluation, test metrics, figures and a
SavedModel export into ``--out RUN_DIR``. Only parses arguments: the work is
:func:`keras_supcon.training.train`.
"""

import argparse
import logging
import sys



class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser():
    from keras_supcon.models.backbones import BACKBONES
    from keras_supcon.training.run import LOSSES, TrainConfig

    d = TrainConfig()
    p = _Parser(prog="python -m keras_supcon.train", description=__doc__.split("\n\n")[1],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    model.add_argument("--backbone", default=d.backbone, choices=list(BACKBONES),
                       metavar="{" + ",".join(BACKBONES) + "}")
    model.add_argument("--weights", default=d.weights,
                       help="none | imagenet (needs the network) | PATH of a weights file")
    model.add_argument("--projection-dim", type=int, default=d.projection_dim)
    model.add_argument("--head-hidden", type=int, default=d.head_hidden)
    train = p.add_argument_group("training")
    train.add_argument("--loss", default=d.loss, choices=LOSSES,
                       help="contrastive pre-training loss, or ce for the end-to-end "
                            "cross-entropy baseline")
    train.add_argument("--temperature", type=float, default=None,
                       help="default 0.1 (supcon, simclr), 0.05 (npairs)")
    train.add_argument("--variant", default=d.variant, choices=("out", "in"),
                       help="SupCon eq. 2 (out) or eq. 3 (in)")
    train.add_argument("--views", type=int, default=d.views, help="augmented views per image")
    train.add_argument("--epochs", type=int, default=d.epochs,
                       help="pre-training epochs (ce: training epochs)")
    train.add_argument("--linear-epochs", type=int, default=d.linear_epochs)
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--optimizer", default=d.optimizer, choices=("adam", "sgd"))
    train.add_argument("--lr", type=float, default=d.lr,
                       help="peak learning rate (linear warm-up, then cosine decay)")
    train.add_argument("--linear-lr", type=float, default=d.linear_lr)
    train.add_argument("--weight-decay", type=float, default=d.weight_decay)
    train.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    train.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop a stage after PATIENCE epochs without validation "
                            "improvement (the best epoch is always kept)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--mixed-precision", action="store_true")
    run = p.add_argument_group("run directory")
    run.add_argument("--out", default=None,
                     help="RUN_DIR (default: runs/<time>-<dataset>-<backbone>-<loss>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a run already in --out")
    run.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"),
                     help="Keras progress output (auto: progress bars)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.errors import KerasSupconError
    from keras_supcon.training.run import TrainConfig, train

    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}
    if settings["verbose"] != "auto":
        settings["verbose"] = int(settings["verbose"])
    try:
        metrics = train(TrainConfig(**settings), resume=args.resume, overwrite=args.overwrite)
    except KerasSupconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with --resume --out RUN_DIR", file=sys.stderr)
        return 130
    top_k = next(k for k in metrics if k.startswith("top"))
    print(f"test accuracy {metrics['accuracy']:.4f} | {top_k} {metrics[top_k]:.4f} | "
          f"macro F1 {metrics['f1_macro']:.4f} | run directory: {metrics['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
