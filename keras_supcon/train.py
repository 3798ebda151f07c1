"""``python -m keras_supcon.train``: the ``keras-supcon-train`` command
(:mod:`keras_supcon.cli.train`)."""

import sys

from keras_supcon.cli.train import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
