"""keras_supcon: supervised contrastive representation learning for images in Keras 3.

Public API::

    from keras_supcon import data, losses, models
    from keras_supcon import TrainConfig, run_training   # the whole CLI job as one call
    from keras_supcon import PruneConfig, prune_run      # python -m keras_supcon.prune
    from keras_supcon import run_ablation                # python -m keras_supcon.ablation
    from keras_supcon.training import fine_tune_linear, fine_tune_nn  # probes on any encoder
    from keras_supcon.training import run_pseudo_labelling  # python -m keras_supcon.pseudo_label
    from keras_supcon.training import train_layerwise       # python -m keras_supcon.layerwise
    from keras_supcon.compression import prune_classifier, to_tf_keras

Importing the package is light: the names above are imported when first used (PEP 562),
so ``from keras_supcon.losses import SupConLoss`` loads the losses and Keras only, not
TensorFlow's data stack or the jobs (on the JAX backend, no TensorFlow at all). Keras
deserialises this package's layers and losses (``encoder.keras``, ``classifier.keras``)
once the modules defining them are imported:
``import keras_supcon.models`` (layers) and ``keras_supcon.losses`` (compiled losses).
"""

import importlib
import os

from keras_supcon._cpu import prefer_onednn
from keras_supcon._launch import launched_as_command
from keras_supcon._version import __version__

# The one exception to leaving the environment alone, for user code too: TensorFlow's
# oneDNN kernels on every x86 CPU (on an AVX2-only CPU TensorFlow would pick Eigen's,
# where ResNet-50's training step was 7x slower: keras_supcon/_cpu.py). A value the user
# set is kept; it must be set before TensorFlow is imported.
prefer_onednn()

# Imported by user code, the package leaves the environment alone. Started as one
# of its commands (keras-supcon-train, python -m keras_supcon.train, ...), the
# process is ours: TensorFlow's C++ messages (grappler cost-model noise on every
# augmentation graph) would drown the progress bars, so they are hidden unless
# TF_CPP_MIN_LOG_LEVEL is set. It must be set before TensorFlow is imported.
if launched_as_command():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Standard library only: imported here.
from keras_supcon.errors import (  # noqa: E402
    ConfigError,
    DataError,
    KerasSupconError,
    OfflineError,
    RunDirError,
)

# Subpackages, imported on first access (``keras_supcon.losses``). ``runs`` is not in
# ``__all__`` but was reachable as an attribute when the package imported everything.
_SUBMODULES = ("data", "losses", "models", "evaluation", "compression", "training", "runs")

# Functions and classes, imported on first access: name -> (module, attribute).
# Not named ``train``: that name is the CLI module ``keras_supcon.train``.
_ATTRIBUTES = {
    "TrainConfig": ("keras_supcon.training.settings", "TrainConfig"),
    "run_training": ("keras_supcon.training.job", "train"),
    "run_ablation": ("keras_supcon.training.ablation", "run_ablation"),
    "PruneConfig": ("keras_supcon.compression.settings", "PruneConfig"),
    "prune_run": ("keras_supcon.compression.run", "prune_run"),
}

__all__ = [
    "data", "losses", "models", "evaluation", "compression", "TrainConfig", "run_training",
    "PruneConfig", "prune_run", "run_ablation", "KerasSupconError",
    "ConfigError", "DataError", "OfflineError", "RunDirError", "__version__",
]


def __getattr__(name):
    """PEP 562: the public names, imported when first used (then cached here)."""
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _ATTRIBUTES:
        module, attribute = _ATTRIBUTES[name]
        value = getattr(importlib.import_module(module), attribute)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
