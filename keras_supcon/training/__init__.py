"""Training stages, run directory and the whole-job entry point."""

from keras_supcon.training.optim import make_optimizer, warmup_cosine
from keras_supcon.training.rundir import RunDir
from keras_supcon.training.run import LOSSES, TrainConfig, train

__all__ = ["TrainConfig", "train", "LOSSES", "RunDir", "make_optimizer", "warmup_cosine"]
