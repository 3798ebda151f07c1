"""Training stages, run directory and the whole-job entry point."""

from keras_supcon.training.optim import make_optimizer, warmup_cosine
from keras_supcon.training.rundir import RunDir
from keras_supcon.training.run import LOSSES, TrainConfig, fine_tune_linear, fine_tune_nn, train

__all__ = ["TrainConfig", "train", "LOSSES", "fine_tune_linear", "fine_tune_nn", "RunDir", "make_optimizer", "warmup_cosine"]
