"""Command line: ``keras-supcon-prune RUN_DIR [--sparsity 0.5] [options]``
(or ``python -m keras_supcon.prune``).

Prunes the classifier of a finished training run with tensorflow-model-optimization
(through its tf_keras twin), fine-tunes it, and writes the stripped model, a
SavedModel, TFLite models and a compression report into RUN_DIR/pruning/. Only
parses arguments: the work is :func:`keras_supcon.compression.prune_run`.
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
    from keras_supcon.compression.settings import PruneConfig

    p = Parser(prog=command_name("prune"), description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help=PruneConfig.__dataclass_fields__["run_dir"].metadata["help"])
    add_settings_arguments(p, PruneConfig, exclude={"run_dir"})
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.compression.run import PruneConfig, prune_run

    settings = vars(args)
    result = run_reporting_errors(lambda: prune_run(PruneConfig(**settings)),
                                  "run the same command again to continue")
    if isinstance(result, int):
        return result
    for report in result["reports"]:
        p = report["pruned"]
        print(f"{report['method']} {report['target_sparsity']:.2f}: sparsity "
              f"{p['sparsity']['total']['sparsity']:.3f} | accuracy {p['accuracy']:.4f} "
              f"({report['accuracy_change']:+.4f}) | zipped {p['saved_model_zipped_bytes']} B "
              f"({report['compression_ratio_zipped']:.2f}x)")
    if "sweep" in result:
        print(result["sweep"])
    print(f"reports in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
