"""``python -m keras_supcon.report``: the ``keras-supcon-report`` command
(:mod:`keras_supcon.cli.report`)."""

import sys

from keras_supcon.cli.report import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
