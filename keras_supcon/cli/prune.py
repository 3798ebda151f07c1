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

from keras_supcon.cli.common import Parser, command_name, run_reporting_errors, verbosity


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}")


def build_parser():
    from keras_supcon.compression.run import METHODS, PruneConfig

    d = PruneConfig()
    p = Parser(prog=command_name("prune"), description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of keras_supcon.train")
    p.add_argument("--sparsity", type=_floats, default=None,
                   help="target fraction of zero weights in [0, 1); several (0,0.2,0.5,0.8) "
                        "run a sweep (default 0.5)")
    p.add_argument("--method", default=d.method, choices=METHODS)
    p.add_argument("--schedule", default=d.schedule, choices=("constant", "polynomial"))
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="fine-tuning epochs (lottery: retraining epochs per round)")
    p.add_argument("--lr", type=float, default=d.lr, help="fine-tuning learning rate (Adam)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    p.add_argument("--m-by-n", default=None, metavar="M:N",
                   help="structured sparsity, M zeros in every N weights (e.g. 2:4)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names to prune (default: every Conv2D and "
                        "Dense kernel but the first convolution)")
    p.add_argument("--include-first-conv", action="store_true")
    lottery = p.add_argument_group("lottery ticket (--method lottery)")
    lottery.add_argument("--scope", default=d.scope, choices=("global", "layer"))
    lottery.add_argument("--rounds", type=int, default=d.rounds)
    lottery.add_argument("--rewind-epoch", type=int, default=d.rewind_epoch,
                         help="0: rewind to initialisation; k: to the weights after epoch k")
    lottery.add_argument("--train-epochs", type=int, default=None,
                         help="dense training epochs (default: the run's --epochs)")
    sens = p.add_argument_group("layer-sensitive pruning (--method sensitivity)")
    sens.add_argument("--rates", type=_floats, default=d.rates,
                      help="sparsities each layer is pruned at alone to measure sensitivity")
    p.add_argument("--no-tflite", action="store_true", help="skip TFLite quantisation")
    p.add_argument("--out", default=None, help="default: RUN_DIR/pruning")
    p.add_argument("--overwrite", action="store_true", help="redo jobs that already finished")
    p.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.compression.run import PruneConfig, prune_run

    settings = vars(args)
    settings["tflite"] = not settings.pop("no_tflite")
    if settings["layers"]:
        settings["layers"] = tuple(n.strip() for n in settings["layers"].split(",") if n.strip())
    settings["verbose"] = verbosity(settings["verbose"])
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
