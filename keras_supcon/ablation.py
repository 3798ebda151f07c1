"""``python -m keras_supcon.ablation``: the ``keras-supcon-ablation`` command
(:mod:`keras_supcon.cli.ablation`)."""

import sys

from keras_supcon.cli.ablation import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
