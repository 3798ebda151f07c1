"""The defaults, chosen on the validation split: one setting varied at a time around
the library's defaults, on ``digits``.

    python experiments/defaults_search.py --loss ce                       # --loss ce
    python experiments/defaults_search.py --loss supcon                   # small_resnet
    python experiments/defaults_search.py --loss supcon --backbone densenet201 \\
        --vary lr=0.001,0.003 --vary epochs=5,10                          # the main command
    python experiments/defaults_search.py --loss ce --vary epochs=5,10,20 --seeds 0,1,2

``--seeds``: every setting runs with each seed (the seed also draws the validation split,
so each seed has its own); the table gives the mean and standard deviation over them.

The selection criterion is the validation accuracy the run itself selects on: the
best validation epoch of an end-to-end run, the probe's validation accuracy (at
its chosen C) of a pre-training run. Test accuracy and kNN accuracy are recorded
beside it, never used to choose. Every run is a run directory under --out
(finished runs are skipped). Writes OUT/search.md and OUT/search.json. Results:
docs/experiments.md.
"""

import argparse
import csv
import json
import logging
import typing
from pathlib import Path

import numpy as np

GRID = {"lr": [3e-4, 1e-3, 3e-3], "batch_size": [32, 64, 128], "epochs": [5, 10, 20],
        "warmup_fraction": [0.0, 0.1], "temperature": [0.05, 0.1, 0.2]}


def validation_accuracy(path):
    """What the run selected on: ``probe.json``'s validation accuracy, or the best
    validation accuracy of the end-to-end stage."""
    path = Path(path)
    if (path / "probe.json").exists():
        return json.loads((path / "probe.json").read_text())["val_accuracy"]
    rows = list(csv.DictReader((path / "history.csv").open()))
    keys = ("val_accuracy", "val_probabilities_accuracy")
    return max(float(r[k]) for r in rows for k in keys if r.get(k))


def run_one(out, base, setting, value, seed=0):
    from keras_supcon.runs.rundir import RunDir
    from keras_supcon.training import TrainConfig, train

    name = "defaults" if value is None else f"{setting}={value:g}"
    path = Path(out) / (name if seed == 0 else f"{name}-seed{seed}")
    if not RunDir(path).is_finished():
        settings = dict(base, out=str(path), verbose=0, seed=seed)
        if value is not None:
            settings[setting] = _typed(TrainConfig, setting, value)
        resume = (path / "state.json").exists() and (path / "config.json").exists()
        train(resume=resume, overwrite=not resume, **settings)
    m = json.loads((path / "metrics.json").read_text())
    return {"run": name, "setting": setting, "value": value, "seed": seed,
            "val_accuracy": validation_accuracy(path), "accuracy": m["accuracy"],
            "knn_accuracy": m["embedding"]["knn_accuracy"], "wall_time_s": m["wall_time_s"]}


def main(argv=None):
    from keras_supcon.training import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", default="supcon")
    p.add_argument("--backbone", default="small_resnet")
    p.add_argument("--vary", action="append", default=[], metavar="SETTING=V1,V2",
                   help="the settings and values to try (default: GRID)")
    p.add_argument("--out", default=None)
    p.add_argument("--seeds", default="0", help="comma-separated seeds of every setting")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    grid = ({k: [float(v) for v in vs.split(",")] for k, vs in
             (item.split("=", 1) for item in args.vary)} if args.vary else dict(GRID))
    if args.loss == "ce":
        grid.pop("temperature", None)
    out = Path(args.out or f"runs/defaults_search/{args.backbone}-{args.loss}")
    base = dict(backbone=args.backbone, loss=args.loss)
    defaults = TrainConfig(**base, out=str(out)).validate()  # the loss's defaults filled in
    seeds = [int(v) for v in args.seeds.split(",")]
    runs = [(None, None)] + [(k, v) for k, values in grid.items() for v in values
                             if v != getattr(defaults, k)]
    rows = []
    for setting, value in runs:
        for seed in seeds:
            rows.append(run_one(out, base, setting, value, seed))
            print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(rows, indent=1))
    lines = [f"{args.backbone}, --loss {args.loss}, digits; one setting varied at a time "
             f"around the defaults; seeds {args.seeds} (mean ± sd where several).", "",
             "| run | validation accuracy (selects) | test accuracy | kNN accuracy | "
             "wall time (s) |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["run"] for r in rows):
        group = [r for r in rows if r["run"] == name]
        cells = [_mean_sd([r[k] for r in group]) for k in ("val_accuracy", "accuracy",
                                                              "knn_accuracy")]
        wall = np.mean([r["wall_time_s"] for r in group])
        lines.append(f"| {name} | {' | '.join(cells)} | {wall:.0f} |")
    (out / "search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _typed(config_class, setting, value):
    """``value`` (parsed as a float) as the type of the setting (``int | None`` -> int)."""
    hint = typing.get_type_hints(config_class)[setting]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return kinds[0](value)


def _mean_sd(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


if __name__ == "__main__":
    main()
