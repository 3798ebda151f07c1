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
    add_settings_arguments,
    apply_config_file,
    command_name,
    run_reporting_errors,
)


def build_parser():
    p = Parser(prog=command_name("layerwise"),
               description=" ".join(__doc__.split("\n\n")[1].split()),
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings from a TOML file (keys = option names, e.g. "
                        "hidden = [256, 64], pretrain = false); options given here win")
    from keras_supcon.training.layerwise import LayerwiseConfig

    run = add_settings_arguments(p, LayerwiseConfig)["run directory"]
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    return p


def main(argv=None):
    parser = build_parser()
    apply_config_file(parser, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.training.layerwise import LayerwiseConfig, train_layerwise

    settings = {k: v for k, v in vars(args).items()
                if k not in ("config", "resume", "overwrite")}
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
