"""How this process was started: by one of keras_supcon's commands, or by user code.

Standard library only: :mod:`keras_supcon` reads it before TensorFlow is imported.
"""

import os
import sys

SCRIPT_PREFIX = "keras-supcon-"


def launched_module():
    """The module of ``python -m MODULE`` when it is one of keras_supcon's, else None.
    ``sys.orig_argv`` is the interpreter's own command line (while the package is
    imported on the way to ``MODULE``, ``sys.argv[0]`` is still ``"-m"``)."""
    argv = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            module = argv[i + 1]
            return module if module.split(".")[0] == "keras_supcon" else None
    return None


def launched_script():
    """The console script (``keras-supcon-train``, ...) that started this process, or None."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith(SCRIPT_PREFIX) else None


def launched_as_command():
    return launched_module() is not None or launched_script() is not None
