"""Command line: ``keras-supcon-pseudo-label --dataset DATA --ratios 1:0,1:1,1:10``
(or ``python -m keras_supcon.pseudo_label``).

Pseudo-labelling: a teacher trained on the labelled images labels the unlabelled
ones; predictions at least --threshold confident join a student's training set.
One student per labelled:unlabelled ratio (and round), each a stage of --out, with
the table pseudo_label.md (kept pseudo-labels, their accuracy, test metrics per
ratio). Only parses arguments: the work is
:func:`keras_supcon.training.pseudo.run_pseudo_labelling`.
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

STUDY = ("labelled", "ratios", "threshold", "rounds", "unlabelled")


def build_parser():
    p = Parser(prog=command_name("pseudo_label"),
               description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings from a TOML file (keys = option names)")
    semi = p.add_argument_group("pseudo-labelling")
    semi.add_argument("--labelled", type=int, default=None,
                      help="labelled images (default: as many as the largest ratio leaves "
                           "room for)")
    semi.add_argument("--ratios", default="1:0,1:0.4,1:1,1:2,1:10",
                      help="labelled:unlabelled ratios (1:0 is the teacher alone)")
    semi.add_argument("--threshold", type=float, default=0.99,
                      help="keep a pseudo-label if its softmax confidence is at least this")
    semi.add_argument("--rounds", type=int, default=1,
                      help="teacher -> student rounds (each student teaches the next)")
    semi.add_argument("--unlabelled", default="auto", choices=("auto", "split", "holdout"),
                      help="the data set's unlabelled split (STL-10), part of the training "
                           "images with labels hidden (holdout), or the split if there is one")
    from keras_supcon.training import TrainConfig

    run = add_settings_arguments(p, TrainConfig)["run directory"]
    p.set_defaults(loss="ce")
    run.add_argument("--resume", action="store_true", help="continue the study in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a study in --out")
    return p


def main(argv=None):
    parser = build_parser()
    apply_config_file(parser, argv)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.training import TrainConfig
    from keras_supcon.training.pseudo import ratio_label, run_pseudo_labelling

    args.pop("config")
    study = {k: args.pop(k) for k in STUDY}
    resume, overwrite = args.pop("resume"), args.pop("overwrite")
    result = run_reporting_errors(
        lambda: run_pseudo_labelling(TrainConfig(**args), resume=resume, overwrite=overwrite,
                                     **study),
        "continue with --resume --out RUN_DIR")
    if isinstance(result, int):
        return result
    for r in result["rows"]:
        print(f"{ratio_label(r['ratio'])} round {r['round']}: kept {r['kept']} of "
              f"{r['unlabelled']} | test accuracy {r['test']['accuracy']:.4f} | "
              f"macro F1 {r['test']['f1_macro']:.4f}")
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
