"""Command line: ``keras-supcon-report RUNS_DIR [--name report] [--title ...]``
(or ``python -m keras_supcon.report``).

Turns a folder of run directories (of keras_supcon.train or keras_supcon.ablation)
into a markdown page with the tables and figures of an ablation: one table per
loss (F1 | Accuracy | Precision | Recall), embedding quality, differences to
ce, a CSV, a bar chart and the curves of every run. Only parses arguments: the
work is :func:`keras_supcon.evaluation.report.write_report`.
"""

import argparse
import sys

from keras_supcon.cli.common import Parser, command_name, run_reporting_errors


def build_parser():
    p = Parser(prog=command_name("report"), description=__doc__.split("\n\n")[1],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder whose sub-folders are runs")
    p.add_argument("--name", default="report",
                   help="writes RUNS_DIR/NAME.md, NAME.csv and NAME_*.png")
    p.add_argument("--title", default="Results")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from keras_supcon.evaluation.report import write_report

    path = run_reporting_errors(
        lambda: write_report(args.runs_dir, name=args.name, title=args.title),
        "run the same command again")
    if isinstance(path, int):
        return path
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
