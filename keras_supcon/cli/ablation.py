"""Command line: ``keras-supcon-ablation --backbones a,b --losses ce,supcon``
(or ``python -m keras_supcon.ablation``).

Trains every combination of backbones x losses (x optional --grid values) with
the same data split, seed and settings (--epochs if given, else each loss's default:
5 of pre-training, 20 end to end), each into its own run directory under --out, and
writes ablation.md / ablation.csv / figures there. Running the same command again
skips finished combinations and resumes interrupted ones. Only parses arguments: the
work is :func:`keras_supcon.training.ablation.run_ablation`.
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
    p = Parser(prog=command_name("ablation"), description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings from a TOML file (keys = option names); options given "
                        "here win. See experiments/")
    p.add_argument("--backbones", default="small_resnet",
                   help="comma-separated backbone names")
    p.add_argument("--losses", default="ce,supcon", help="comma-separated losses")
    p.add_argument("--grid", action="append", default=[], metavar="SETTING=V1,V2,...",
                   help="also vary a setting (e.g. temperature=0.05,0.1,0.5); repeatable")
    p.add_argument("--out", default="runs/ablation", help="folder of the ablation")
    p.add_argument("--name", default="ablation",
                   help="writes OUT/NAME.md, NAME.csv, NAME.json, NAME_*.png (ablations sharing "
                        "an --out share the runs they have in common)")
    p.add_argument("--title", default=None, help="title of the report")
    from keras_supcon.training import TrainConfig
    from keras_supcon.training.ablation import NOT_SETTINGS

    add_settings_arguments(p, TrainConfig, exclude=NOT_SETTINGS - {"verbose"})
    return p


def parse_args(argv=None):
    """``(out, backbones, losses, grid, settings)`` from the command line and the
    ``--config`` file; ``settings`` include ``name`` and ``title``."""
    parser = build_parser()
    apply_config_file(parser, argv)
    settings = vars(parser.parse_args(argv))
    settings.pop("config")
    out = settings.pop("out")
    backbones, losses = settings.pop("backbones"), settings.pop("losses")
    grid = settings.pop("grid")
    return out, backbones, losses, grid, settings


def main(argv=None):
    out, backbones, losses, grid, settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_supcon.training.ablation import run_ablation

    result = run_reporting_errors(
        lambda: run_ablation(out, backbones, losses, grid, **settings),
        "run the same command again to continue")
    if isinstance(result, int):
        return result
    for c in result["combinations"]:
        print(f"{c['name']}: {c['status']}" + (f" ({c['error']})" if c["error"] else ""))
    print(f"report: {result['report']}")
    return 1 if any(c["status"] == "failed" for c in result["combinations"]) else 0


if __name__ == "__main__":
    sys.exit(main())
