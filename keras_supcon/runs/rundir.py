"""The run directory: every stage reads and writes its files through here.

Files are written atomically (a temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written ``metrics.json`` or model.
``state.json`` records which stages are complete; per-epoch checkpoints of the
stage in progress live in ``checkpoints/<stage>/`` until that stage finishes.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from keras_supcon.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"


def library_versions():
    """The versions ``config.json`` records beside a run's settings."""
    import keras
    import numpy as np
    import sklearn
    import tensorflow as tf

    from keras_supcon._version import __version__

    return {"keras_supcon": __version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "backend": keras.backend.backend()}


def default_run_dir(dataset, *parts):
    """``runs/<YYYYmmdd-HHMMSS>-<data>-<parts>``: the folder of a new run given no ``--out``
    (``dataset``: a name, or a path whose file stem names it; None: left out)."""
    names = [Path(str(dataset)).stem or "data"] if dataset is not None else []
    return Path("runs") / "-".join([f"{datetime.now():%Y%m%d-%H%M%S}", *names, *map(str, parts)])


def open_run(config, *, resume=False, overwrite=False):
    """``(config, run)`` of a job: a new run directory ``config.out``, or (``resume``)
    the interrupted run there with its saved settings (``config.json``) restored.

    ``config`` is a settings dataclass with ``validate()`` and ``from_dict()``;
    it is validated before anything is written.
    """
    if resume:
        if config.out is None:
            raise ConfigError("--resume needs --out RUN_DIR")
        run = RunDir.prepare(config.out, resume=True)
        config = type(config).from_dict(run.read_json(CONFIG_FILE)["settings"])
        config.out = str(run.path)  # the folder may have moved since
        config.validate()
        log.info("resuming %s (completed stages: %s)", run.path,
                 ", ".join(run.state()["completed"]) or "none")
    else:
        config.validate()
        run = RunDir.prepare(config.out, overwrite=overwrite)
    return config, run


def settings_changes(saved, wanted):
    """``["key: <saved> there, <wanted> now", ...]`` for the settings of ``wanted``
    (a dict) that differ from ``saved`` (a run's ``config.json`` settings), compared
    as JSON stores them (tuples as lists)."""
    saved, wanted = json.loads(json.dumps(saved)), json.loads(json.dumps(wanted))
    return [f"{k}: {saved.get(k)} there, {v} now" for k, v in wanted.items()
            if saved.get(k) != v]


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def prepare(cls, path, *, resume=False, overwrite=False):
        """Open ``path`` for a new run (``resume=False``) or an interrupted one.

        A new run refuses a folder that already holds a run (finished or not)
        unless ``overwrite``, and any other non-empty folder.
        """
        run = cls(path)
        if resume:
            if overwrite:
                raise RunDirError("--resume and --overwrite exclude each other")
            if not (run.path / STATE_FILE).is_file() or not (run.path / CONFIG_FILE).is_file():
                raise RunDirError(f"--resume: {run.path} holds no checkpoint of a run "
                                  f"(no {STATE_FILE} / {CONFIG_FILE})")
            if run.is_finished():
                raise RunDirError(f"--resume: the run in {run.path} is already finished")
            return run
        if run.path.exists():
            if not run.path.is_dir():
                raise RunDirError(f"--out {run.path} exists and is not a directory")
            is_run = (run.path / STATE_FILE).exists() or (run.path / CONFIG_FILE).exists()
            if is_run and not overwrite:
                what = "a finished run" if run.is_finished() else "an unfinished run"
                hint = "--overwrite" if run.is_finished() else "--resume or --overwrite"
                raise RunDirError(f"--out {run.path} already holds {what}; use {hint}")
            if is_run:
                shutil.rmtree(run.path)
            elif any(run.path.iterdir()):
                raise RunDirError(f"--out {run.path} is not empty and holds no run; "
                                  "choose another directory")
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    # ------------------------------------------------------------ atomic files
    def file(self, name):
        return self.path / name

    @contextlib.contextmanager
    def atomic_path(self, name):
        """Yield a temporary path beside ``name``; on success it replaces ``name``.

        Works for files and for directories (e.g. a SavedModel).
        """
        final = self.path / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        tmp = tmp_dir / final.name  # keeps the suffix (.keras, .png) that writers check
        try:
            yield tmp
            if final.is_dir():
                trash = final.parent / f".{final.name}.old"
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash)
            else:
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    def write_text(self, name, text):
        with self.atomic_path(name) as tmp:
            tmp.write_text(text)
            return self.path / name

    def write_json(self, name, obj):
        return self.write_text(name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def read_json(self, name):
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing") from None
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path} is not valid JSON ({exc})") from None

    def save_figure(self, fig, name):
        with self.atomic_path(name) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        return self.path / name

    def save_model(self, model, name):
        with self.atomic_path(name) as tmp:
            model.save(tmp)
        return self.path / name

    # ------------------------------------------------------------ stage state
    def state(self):
        path = self.path / STATE_FILE
        return self.read_json(STATE_FILE) if path.exists() else {"completed": [], "finished": False}

    def _update_state(self, **changes):
        state = self.state()
        state.update(changes)
        self.write_json(STATE_FILE, state)

    def init_state(self):
        self.write_json(STATE_FILE, {"completed": [], "finished": False})

    # ------------------------------------------------------------ lifecycle
    def start(self, settings, **record):
        """Begin a new run: ``config.json`` = ``{"settings": settings, **record,
        "versions": ..., "cpu": ...}`` (the CPU kind, ``_cpu.cpu_kind()``: float32 results
        differ between kinds) and no completed stage."""
        from keras_supcon._cpu import cpu_kind

        self.write_json(CONFIG_FILE, {"settings": settings, **record,
                                      "versions": library_versions(), "cpu": cpu_kind()})
        self.init_state()

    def begin(self, settings, *, resume, **record):
        """A job's start: :meth:`start` for a new run; a resumed run keeps its record."""
        if not resume:
            self.start(settings, **record)

    def finish(self, metrics, started):
        """A job's end: ``metrics`` (with the wall time since ``started``, a
        ``time.time()``, and the run directory) written to ``metrics.json``, the run
        marked finished; returns ``metrics``."""
        metrics["wall_time_s"] = round(time.time() - started, 1)
        metrics["run_dir"] = str(self.path)
        self.write_json("metrics.json", metrics)
        self.mark_finished()
        return metrics

    def stage(self, name, train, file, *, saved=None):
        """The model of stage ``name``: loaded from ``file`` when the stage finished
        before (an interrupted run resumed); else ``train()``'s model, written to
        ``file`` (``saved(model)`` when given, e.g. without its optimizer) and the
        stage marked done. A stage in progress continues from its checkpoints
        (:func:`~keras_supcon.runs.callbacks.stage_callbacks`)."""
        import keras

        if self.stage_done(name):
            return keras.models.load_model(self.file(file))
        model = train()
        self.save_model(saved(model) if saved else model, file)
        self.mark_stage_done(name)
        return model

    def stage_done(self, stage):
        return stage in self.state()["completed"]

    def mark_stage_done(self, stage):
        completed = self.state()["completed"]
        if stage not in completed:
            self._update_state(completed=completed + [stage])
        shutil.rmtree(self.checkpoint_dir(stage), ignore_errors=True)

    def mark_finished(self):
        self._update_state(finished=True)
        with contextlib.suppress(OSError):  # only if empty: no stage left a checkpoint
            (self.path / "checkpoints").rmdir()

    def is_finished(self):
        return bool(self.state().get("finished"))

    def checkpoint_dir(self, stage):
        return self.path / "checkpoints" / stage
