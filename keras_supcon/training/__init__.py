"""The jobs: training (settings, the one model builder, stages, the whole job),
fine-tuning, layer-wise pre-training, pseudo-labelling and ablations."""

from keras_supcon.runs.rundir import RunDir
from keras_supcon.training.distribute import STRATEGIES, distribution_scope
from keras_supcon.training.job import fine_tune_linear, fine_tune_nn, train
from keras_supcon.training.layerwise import LayerwiseConfig, train_layerwise
from keras_supcon.training.optim import make_optimizer, warmup_cosine
from keras_supcon.training.probe import fit_linear_probe, fit_mlp_probe
from keras_supcon.training.pseudo import run_pseudo_labelling
from keras_supcon.training.settings import LOSS_NAMES, TrainConfig

__all__ = ["TrainConfig", "train", "LOSS_NAMES", "fine_tune_linear", "fine_tune_nn",
           "run_pseudo_labelling", "LayerwiseConfig", "train_layerwise", "RunDir",
           "make_optimizer", "warmup_cosine", "distribution_scope", "STRATEGIES",
           "fit_linear_probe", "fit_mlp_probe"]
