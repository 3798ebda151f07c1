"""Callbacks of a run: history written atomically each epoch, checkpoints, early stopping."""

import csv
import io

import keras
import numpy as np

from keras_supcon.models.batchnorm import precise_batchnorm

HISTORY_FILE = "history.csv"


def read_history(run):
    """The rows of ``history.csv`` as dicts (numbers as floats); [] if none yet."""
    path = run.file(HISTORY_FILE)
    if not path.exists():
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(path.read_text())):
        parsed = {k: (v if k == "stage" else (float(v) if v != "" else None))
                  for k, v in row.items()}
        parsed["epoch"] = int(parsed["epoch"])
        rows.append(parsed)
    return rows


class HistoryCSV(keras.callbacks.Callback):
    """Append one row per epoch (stage, epoch, logs, learning rate) to ``history.csv``.

    The whole file is rewritten atomically each epoch. On resume, rows of this
    stage from epochs after the restored checkpoint are dropped.
    """

    def __init__(self, run, stage):
        super().__init__()
        self.run = run
        self.stage = stage

    def on_epoch_begin(self, epoch, logs=None):
        rows = read_history(self.run)
        kept = [r for r in rows if not (r["stage"] == self.stage and r["epoch"] > epoch)]
        if len(kept) != len(rows):
            self._write(kept)

    def on_epoch_end(self, epoch, logs=None):
        row = {"stage": self.stage, "epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(np.asarray(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self._write(read_history(self.run) + [row])

    def _write(self, rows):
        write_history(self.run, rows)


def write_history(run, rows):
    """Write ``rows`` (dicts with ``stage`` and ``epoch`` first) as ``history.csv``, atomically."""
    columns = ["stage", "epoch"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    run.write_text(HISTORY_FILE, buf.getvalue())


def stage_callbacks(run, stage, *, monitor, mode, epochs, patience=None, tie_break=None):
    """Per-epoch checkpoint (resumable), history, and early stopping / model selection.

    Without ``patience`` training runs all epochs, and the weights of the best
    epoch on ``monitor`` are restored at the end (model selection on validation;
    ``tie_break``: see :class:`BestEpoch`).
    """
    return [
        # Before BackupAndRestore: the best epoch is on disk before the epoch counts as done.
        ResumableEarlyStopping(run, stage, monitor=monitor, mode=mode, tie_break=tie_break,
                               patience=patience if patience else epochs + 1),
        keras.callbacks.BackupAndRestore(str(run.checkpoint_dir(stage)), delete_checkpoint=False),
        HistoryCSV(run, stage),
    ]


class BestEpoch(keras.callbacks.EarlyStopping):
    """``EarlyStopping(restore_best_weights=True)`` whose ties on ``monitor`` go to the
    epoch with the lower ``tie_break`` (a loss logged beside it, e.g. ``val_loss``).

    Keras keeps the first epoch that reaches the best value. Validation accuracy on a
    small split ties often (144 images: steps of 0.7%), and the first of tied epochs is
    the least trained one: on digits, ResNet-50's cross-entropy run at lr 3e-3 kept epoch
    12 of 20 where epochs 16 and 17 had the same validation accuracy and a lower validation
    loss (0.079 and 0.094 against 0.154; docs/experiments.md, section 0f).
    Without ``tie_break`` this is Keras' callback.
    """

    def __init__(self, tie_break=None, **kwargs):
        super().__init__(restore_best_weights=True, **kwargs)
        self.tie_break, self.best_tie, self._tie = tie_break, None, None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best_tie = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.tie_break and self.monitor in logs and self.tie_break not in logs:
            raise ValueError(f"BestEpoch: tie_break {self.tie_break!r} is not logged beside "
                             f"{self.monitor!r}; logged: {', '.join(sorted(logs))}")
        self._tie = logs.get(self.tie_break) if self.tie_break else None
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch:
            self.best_tie = self._tie

    def _is_improvement(self, monitor_value, reference_value):
        if super()._is_improvement(monitor_value, reference_value):
            return True
        return (monitor_value == reference_value and self._tie is not None
                and self.best_tie is not None and self._tie < self.best_tie)


class ResumableEarlyStopping(BestEpoch):
    """:class:`BestEpoch` (``restore_best_weights``) whose state survives ``--resume``.

    Keras' callback keeps the best value, the best epoch's weights and the patience
    count in memory, so a resumed ``fit`` would restore the best epoch *after* the
    interruption. Here the weights of each new best epoch go to
    ``checkpoints/<stage>/best.weights.h5`` and the state to ``early_stopping.json``
    (both atomically), and a resumed ``fit`` starts from them.
    """

    WEIGHTS, STATE = "best.weights.h5", "early_stopping.json"

    def __init__(self, run, stage, **kwargs):
        super().__init__(verbose=1, **kwargs)
        self.run, self.stage = run, stage

    def _name(self, file):
        return str(self.run.checkpoint_dir(self.stage).relative_to(self.run.path) / file)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state_path = self.run.file(self._name(self.STATE))
        if not state_path.exists():
            return
        state = self.run.read_json(self._name(self.STATE))
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_tie = state.get("best_tie")  # absent from runs saved before ties were broken
        current = self.model.get_weights()
        self.model.load_weights(self.run.file(self._name(self.WEIGHTS)))
        self.best_weights = self.model.get_weights()
        self.model.set_weights(current)

    def on_epoch_end(self, epoch, logs=None):
        previous_best = self.best_epoch if self.best_weights is not None else None
        super().on_epoch_end(epoch, logs)
        if self.best_weights is None:  # no monitor value this epoch
            return
        if self.best_epoch != previous_best:
            with self.run.atomic_path(self._name(self.WEIGHTS)) as tmp:
                self.model.save_weights(tmp)
        self.run.write_json(self._name(self.STATE), {
            "monitor": self.monitor, "best": float(self.best), "best_epoch": int(self.best_epoch),
            "best_tie": None if self.best_tie is None else float(self.best_tie),
            "wait": int(self.wait), "epoch": int(epoch)})


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute the BatchNorm statistics of ``target`` (the model being trained, or
    the part of it that holds the BatchNorm layers) over ``max_batches`` clean
    training batches before each validation pass of ``fit``, so that validation
    and model selection see the statistics the test will see."""

    def __init__(self, target, batches, max_batches):
        super().__init__()
        self.target, self.batches, self.max_batches = target, batches, max_batches

    def on_test_begin(self, logs=None):
        precise_batchnorm(self.target, self.batches, max_batches=self.max_batches)
