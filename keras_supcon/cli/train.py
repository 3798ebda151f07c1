"""Command line: ``keras-supcon-train --backbone densenet201 [options]``
(or ``python -m keras_supcon.train``).

Runs SupCon pre-training, linear evaluation, test metrics, figures and a
SavedModel export into ``--out RUN_DIR``. Only parses arguments: the work is
:func:`keras_supcon.training.train`.
"""

import argparse
import logging
import sys

from keras_supcon.cli.common import (
    Parser,
    add_settings_arguments,
    command_name,
    run_reporting_errors,
)


def build_parser():
    p = Parser(prog=command_name("train"), description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from keras_supcon.training import TrainConfig

    run = add_settings_arguments(p, TrainConfig)["run directory"]
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a run already in --out")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.training import TrainConfig, train

    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}
    metrics = run_reporting_errors(
        lambda: train(TrainConfig(**settings), resume=args.resume, overwrite=args.overwrite),
        "continue with --resume --out RUN_DIR")
    if isinstance(metrics, int):
        return metrics
    top_k = next(k for k in metrics if k.startswith("top"))
    knn = metrics["embedding"]["knn_accuracy"]
    print(f"test accuracy {metrics['accuracy']:.4f} | {top_k} {metrics[top_k]:.4f} | "
          f"macro F1 {metrics['f1_macro']:.4f} | kNN accuracy of the encoder {knn:.4f} | "
          f"run directory: {metrics['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
