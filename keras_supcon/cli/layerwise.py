"""Command line: ``keras-supcon-layerwise --hidden 1024,1200,728,512,128 [options]``
(or ``python -m keras_supcon.layerwise``).

Greedy layer-wise auto-encoder pre-training (Bengio et al., 2007) of a
fully-connected classifier on flattened images, then end-to-end fine-tuning;
test metrics, figures and the classifier go into ``--out RUN_DIR``.
``--no-pretrain`` trains the same network from random initialisation (the
baseline). Only parses arguments: the work is
:func:`keras_supcon.training.layerwise.train_layerwise`.
"""

import argparse
import logging
import sys

from keras_supcon.cli.common import (
    Parser,
    apply_config_file,
    command_name,
    run_reporting_errors,
    verbosity,
)

_DEFAULT_HIDDEN = "1024,1200,728,512,128"


def build_parser():
    p = Parser(prog=command_name("layerwise"),
               description=" ".join(__doc__.split("\n\n")[1].split()),
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings from a TOML file (keys = option names, e.g. "
                        "hidden = [256, 64], pretrain = false); options given here win")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="digits",
                      help="digits | a TFDS name (cifar10, ...) | a .npz file (x_train, y_train, "
                           "x_test, y_test) | a folder of class sub-folders")
    data.add_argument("--data-dir", default=None, help="TFDS data directory")
    data.add_argument("--image-size", type=int, default=None,
                      help="images are resized to S x S x 3, flattened and scaled to [0, 1] "
                           "(default 32)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="part of the training data held out for validation")
    model = p.add_argument_group("model")
    model.add_argument("--hidden", default=_DEFAULT_HIDDEN, metavar="W1,W2,...",
                       help="widths of the hidden layers, input side first")
    model.add_argument("--activation", default="relu", choices=("relu", "sigmoid"),
                       help="of the hidden layers")
    model.add_argument("--dropout", type=float, default=0.0,
                       help="dropout after each hidden layer while fine-tuning")
    train = p.add_argument_group("training")
    train.add_argument("--no-pretrain", dest="pretrain", action="store_false",
                       help="no auto-encoder pre-training: the same network from random "
                            "initialisation (the baseline)")
    train.add_argument("--pretrain-epochs", type=int, default=5, help="epochs per auto-encoder")
    train.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    train.add_argument("--lr", type=float, default=1e-3,
                       help="peak fine-tuning learning rate (linear warm-up, then cosine decay)")
    train.add_argument("--pretrain-lr", type=float, default=None,
                       help="peak learning rate of the auto-encoders (default: --lr)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup-fraction", type=float, default=0.1)
    train.add_argument("--noise", type=float, default=0.0,
                       help="std of Gaussian noise on each auto-encoder's input (denoising "
                            "auto-encoders); 0: off")
    train.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop a stage after PATIENCE epochs without validation "
                            "improvement (the best epoch is always kept)")
    train.add_argument("--seed", type=int, default=0)
    report = p.add_argument_group("report")
    report.add_argument("--tsne-layer", type=int, default=None, metavar="K",
                        help="t-SNE of the test codes of hidden layer K (1 = nearest the "
                             "input; default: the last)")
    run = p.add_argument_group("run directory")
    run.add_argument("--out", default=None,
                     help="RUN_DIR (default: runs/<time>-<dataset>-layerwise-<pretrained|scratch>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"),
                     help="Keras progress output (auto: progress bars)")
    return p


def main(argv=None):
    parser = build_parser()
    apply_config_file(parser, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.training.layerwise import LayerwiseConfig, train_layerwise

    settings = {k: v for k, v in vars(args).items()
                if k not in ("config", "resume", "overwrite")}
    settings["verbose"] = verbosity(str(settings["verbose"]))
    metrics = run_reporting_errors(
        lambda: train_layerwise(LayerwiseConfig(**settings), resume=args.resume,
                                overwrite=args.overwrite),
        "continue with --resume --out RUN_DIR")
    if isinstance(metrics, int):
        return metrics
    print(f"test accuracy {metrics['accuracy']:.4f} | macro F1 {metrics['f1_macro']:.4f} | "
          f"run directory: {metrics['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
