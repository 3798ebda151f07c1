"""``python -m keras_supcon.layerwise``: the ``keras-supcon-layerwise`` command
(:mod:`keras_supcon.cli.layerwise`)."""

import sys

from keras_supcon.cli.layerwise import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
