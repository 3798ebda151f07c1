"""``python -m keras_supcon.pseudo_label``: the ``keras-supcon-pseudo-label`` command
(:mod:`keras_supcon.cli.pseudo_label`)."""

import sys

from keras_supcon.cli.pseudo_label import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
