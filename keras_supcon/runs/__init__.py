"""The run layer, under every job (training, fine-tuning, layer-wise, pseudo-labelling,
pruning, ablations) and read by the reports.

- :mod:`.rundir`: the run directory (atomic files, ``config.json`` with the library
  versions, ``state.json``), opening a new or interrupted run, and the stage
  lifecycle (:meth:`~.rundir.RunDir.stage`: load a finished stage, or train, save and
  mark it);
- :mod:`.callbacks`: ``history.csv``, per-epoch checkpoints, the best epoch (kept
  across ``--resume``), precise BatchNorm statistics before validation;
- :mod:`.export`: the SavedModel a run ships (images in, probabilities out).

It imports nothing from :mod:`keras_supcon.training` or :mod:`keras_supcon.compression`.
"""

from keras_supcon.runs.callbacks import read_history, stage_callbacks, write_history
from keras_supcon.runs.export import check_saved_model, export_saved_model, serve_saved_model
from keras_supcon.runs.rundir import (
    CONFIG_FILE,
    STATE_FILE,
    RunDir,
    library_versions,
    open_run,
)

__all__ = ["RunDir", "open_run", "library_versions", "CONFIG_FILE", "STATE_FILE",
           "read_history", "write_history", "stage_callbacks", "export_saved_model",
           "check_saved_model", "serve_saved_model"]
