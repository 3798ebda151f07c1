"""Callbacks of a run: the best epoch (model selection) survives an interruption."""

import keras
import numpy as np
import pytest

from keras_supcon.runs.callbacks import BestEpoch, stage_callbacks
from keras_supcon.runs.rundir import RunDir

# (validation accuracy, validation loss) per epoch: the best is epoch 2; the run is killed
# after epoch 4 (the best one and two worse); epoch 5, after the resume, ties epoch 2's
# accuracy with a lower loss: kept when ties are broken by the loss, not by Keras' rule
SCRIPT = [(0.5, 1.0), (0.9, 0.5), (0.6, 0.6), (0.7, 0.3), (0.9, 0.4)]


class _Script(keras.callbacks.Callback):
    """Writes the scripted monitor value into the logs the later callbacks see, and
    keeps the weights each epoch ended with."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"], logs["val_loss"] = SCRIPT[epoch]
        self.weights[epoch + 1] = self.model.get_weights()


class _Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == 4:
            raise KeyboardInterrupt("killed after epoch 4")


def _fit(run, extra, tie_break=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")
    callbacks = [extra[0]] + stage_callbacks(run, "ce", monitor="val_accuracy", mode="max",
                                             epochs=len(SCRIPT), tie_break=tie_break) + extra[1:]
    model.fit(x, y, epochs=len(SCRIPT), batch_size=8, callbacks=callbacks, verbose=0)
    return model


@pytest.mark.parametrize("tie_break", [None, "val_loss"])
@pytest.mark.parametrize("interrupted", [False, True])
def test_the_best_epoch_is_restored_after_resume(tmp_path, interrupted, tie_break):
    run = RunDir(tmp_path / "run")
    weights = {}
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            _fit(run, [_Script(weights), _Kill()], tie_break)
        assert sorted(weights) == [1, 2, 3, 4]
    model = _fit(run, [_Script(weights)], tie_break)
    assert sorted(weights) == [1, 2, 3, 4, 5]
    best = 5 if tie_break else 2  # Keras keeps the first of tied epochs
    for got, want in zip(model.get_weights(), weights[best], strict=True):
        np.testing.assert_array_equal(got, want)
    state = run.read_json("checkpoints/ce/early_stopping.json")
    assert (state["best_epoch"] + 1, state["best"], state["wait"]) == (best, 0.9, 5 - best)
    assert state["best_tie"] == (0.4 if tie_break else None)


def test_a_tie_break_that_is_not_logged_is_an_error():
    """A misspelt tie_break would silently give Keras' rule back: it is an error instead."""
    best = BestEpoch(monitor="val_accuracy", tie_break="val_los", mode="max")
    best.set_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    best.on_train_begin()
    best.on_epoch_end(0, {"loss": 1.0})  # no validation this epoch: nothing to compare
    with pytest.raises(ValueError, match="'val_los' is not logged beside 'val_accuracy'"):
        best.on_epoch_end(1, {"val_accuracy": 0.5, "val_loss": 1.0})


def test_a_new_fit_forgets_the_last_fits_tie():
    best = BestEpoch(monitor="val_accuracy", tie_break="val_loss", mode="max")
    best.set_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    best.on_train_begin()
    best.on_epoch_end(0, {"val_accuracy": 0.5, "val_loss": 1.0})
    assert best.best_tie == 1.0
    best.on_train_begin()
    assert (best.best_tie, best.best_epoch) == (None, 0) and best.best_weights is None
