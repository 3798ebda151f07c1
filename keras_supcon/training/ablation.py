"""Ablations: every combination of backbones x losses (x optional setting values),
same data split, seed and settings (the epochs: ``--epochs`` if given, else each loss's
default, 5 of pre-training or 20 end to end), each trained by
:func:`~keras_supcon.training.train` into its own run directory
``OUT/<backbone>-<loss>[-<setting><value>...]``.

Finished combinations are skipped and interrupted ones resumed, so running the
same ablation again continues where it stopped. A combination that raises is
recorded as failed (message in ``ablation.json``, traceback in
``OUT/errors/<name>.txt``) and the others still run. Then the report
(``ablation.md`` / ``ablation.csv`` / figures) is written by
:func:`keras_supcon.evaluation.report.write_report`.
"""

import dataclasses
import itertools
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import keras

from keras_supcon.errors import ConfigError
from keras_supcon.evaluation.report import check_report_name, write_report
from keras_supcon.losses.registry import uses_setting
from keras_supcon.models.backbones import BACKBONES
from keras_supcon.runs.rundir import CONFIG_FILE, STATE_FILE, RunDir, settings_changes
from keras_supcon.runs.settings import parse_setting, setting_type
from keras_supcon.training.job import train
from keras_supcon.training.settings import LOSS_NAMES, TrainConfig

log = logging.getLogger(__name__)

# Settings an ablation cannot vary or set per run.
NOT_SETTINGS = {"backbone", "loss", "out", "verbose"}


def parse_names(names, known, option):
    """A tuple of names from ``"a,b"`` or a list; errors name the offending item."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in (names or []) if n]
    if not names:
        raise ConfigError(f"{option} is empty; give one or more of: {', '.join(known)}")
    for n in names:
        if n not in known:
            raise ConfigError(f"{option}: unknown name {n!r}; choose from: {', '.join(known)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{option}: {', '.join(dup)} given more than once")
    return tuple(names)


def parse_grid(grid):
    """``{"temperature": [0.05, 0.1]}`` or ``["temperature=0.05,0.1"]``: values parsed by
    the :class:`TrainConfig` field's declared type (and checked against its choices)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    items = grid.items() if isinstance(grid, dict) else [_split_grid_item(g) for g in grid or ()]
    parsed = {}
    for name, values in items:
        name = name.replace("-", "_")
        if name not in fields or name in NOT_SETTINGS:
            raise ConfigError(f"--grid: {name!r} is not a setting that can be varied "
                              "(backbones and losses have their own options)")
        if name in parsed:
            raise ConfigError(f"--grid: {name} given more than once")
        try:
            typed = [parse_setting(fields[name], v) for v in values]
        except ConfigError as exc:
            raise ConfigError(f"--grid {name}: values must be "
                              f"{setting_type(fields[name]).__name__}; got {list(values)} "
                              f"({exc})") from None
        if not typed:
            raise ConfigError(f"--grid {name}: no values")
        if len(set(typed)) != len(typed):
            raise ConfigError(f"--grid {name}: a value is given more than once")
        parsed[name] = typed
    return parsed


def _split_grid_item(text):
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--grid expects NAME=V1,V2,...; got {text!r}")
    return name.strip(), [v for v in values.split(",") if v.strip()]


def _value_text(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class Combination:
    backbone: str
    loss: str
    values: dict = field(default_factory=dict)  # grid settings of this run

    @property
    def name(self):
        extra = "".join(f"-{k.replace('_', '')}{_value_text(v)}" for k, v in self.values.items())
        return f"{self.backbone}-{self.loss}{extra}"


def plan(backbones, losses, grid=None, settings=None, out="runs/ablation"):
    """The combinations and their validated :class:`TrainConfig`, before anything runs."""
    backbones = parse_names(backbones, list(BACKBONES), "--backbones")
    losses = parse_names(losses, list(LOSS_NAMES), "--losses")
    grid = parse_grid(grid or {})
    # a --grid setting replaces the single value given for it (or its default)
    settings = {k: v for k, v in (settings or {}).items() if k not in grid}
    clash = sorted((set(settings) & NOT_SETTINGS) - {"verbose"})
    if clash:
        raise ConfigError(f"settings {', '.join(clash)} are set by the ablation itself "
                          "(--backbones, --losses, --out)")
    for key in grid:
        unused = [loss for loss in losses if not uses_setting(loss, key)]
        if unused:
            raise ConfigError(f"--grid {key} does not change {', '.join(unused)} runs; "
                              f"remove {', '.join(unused)} from --losses or {key} from --grid")
    combos, configs = [], []
    for backbone, loss, *values in itertools.product(backbones, losses, *grid.values()):
        combo = Combination(backbone, loss, dict(zip(grid, values)))
        config = TrainConfig(**{**settings, **combo.values}, backbone=backbone, loss=loss,
                             out=str(Path(out) / combo.name))
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{combo.name}: {exc}") from None
        combos.append(combo)
        configs.append(config)
    return combos, configs


def _shared_settings(config):
    """What must be equal for runs to be compared: every setting the run's loss uses
    (a temperature does not change a ce run), but the varied ones."""
    return {k: v for k, v in dataclasses.asdict(config).items()
            if k not in NOT_SETTINGS and uses_setting(config.loss, k)}


def run_ablation(out, backbones, losses, grid=None, *, name="ablation", title=None, **settings):
    """Train every combination into ``out`` and write the report ``out/<name>.md``
    (and ``<name>.json`` / ``.csv`` / ``_*.png``). Several ablations can share
    ``out`` under different names: a run they have in common is trained once.

    Returns ``{"combinations": [{name, backbone, loss, values, status, error}], "report": path}``
    with ``status`` one of ``finished`` (trained now), ``skipped`` (finished
    before), ``failed``.
    """
    out = Path(out)
    check_report_name(name, "--name")  # before anything trains
    combos, configs = plan(backbones, losses, grid, settings, out)
    book = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for combo, config in zip(combos, configs):
        run = RunDir(config.out)
        entry = {"name": combo.name, "backbone": combo.backbone, "loss": combo.loss,
                 "values": combo.values, "status": "pending", "error": None}
        entries.append(entry)
        if run.file(CONFIG_FILE).exists():
            saved = TrainConfig.from_dict(run.read_json(CONFIG_FILE)["settings"])
            changed = settings_changes(_shared_settings(saved), _shared_settings(config))
            if changed:
                raise ConfigError(f"{run.path} was trained with other settings "
                                  f"({'; '.join(changed)}); use another --out, or the same "
                                  "settings to continue")
            if run.is_finished():
                entry["status"] = "skipped"
    grid = parse_grid(grid or {})
    settings = {k: v for k, v in settings.items() if k not in grid}
    book.write_json(f"{name}.json", _book(settings, grid, entries))

    for entry, config in zip(entries, configs):
        if entry["status"] == "skipped":
            log.info("ablation: %s already finished, skipped", entry["name"])
            continue
        run = RunDir(config.out)
        resume = run.file(STATE_FILE).exists() and run.file(CONFIG_FILE).exists()
        log.info("ablation: %s (%s)", entry["name"], "resuming" if resume else "starting")
        keras.backend.clear_session()
        error_file = out / "errors" / f"{entry['name']}.txt"
        try:
            train(dataclasses.replace(config), resume=resume)
        except Exception as exc:  # noqa: BLE001 - a failed combination must not stop the rest
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            log.error("ablation: %s failed: %s", entry["name"], entry["error"])
            book.write_text(f"errors/{entry['name']}.txt", traceback.format_exc())
        else:
            entry["status"] = "finished"
            error_file.unlink(missing_ok=True)
        book.write_json(f"{name}.json", _book(settings, grid, entries))

    if title is None:
        title = (f"Ablation: {', '.join(dict.fromkeys(c.backbone for c in combos))} x "
                 f"{', '.join(dict.fromkeys(c.loss for c in combos))}")
    failed = {e["name"]: e["error"] for e in entries if e["status"] == "failed"}
    report = write_report(out, [Path(c.out) for c in configs], name=name, failed=failed,
                          title=title)
    return {"combinations": entries, "report": str(report), "out": str(out)}


def _book(settings, grid, entries):
    return {"settings": {k: v for k, v in settings.items() if k != "verbose"},
            "grid": grid, "combinations": entries}
