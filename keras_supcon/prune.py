"""``python -m keras_supcon.prune``: the ``keras-supcon-prune`` command
(:mod:`keras_supcon.cli.prune`)."""

import sys

from keras_supcon.cli.prune import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
