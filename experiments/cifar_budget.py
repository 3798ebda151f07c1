"""Budget study: where (or whether) contrastive pre-training overtakes cross-entropy.

small_resnet on the CIFAR-10 subset (../shared/data/cifar10_subset.npz), the
library's defaults (batch 64, Adam 1e-3 with warm-up and cosine decay, BatchNorm
momentum 0.9 + precise statistics, the simclr augmentation policy, linear probe by
L-BFGS on cached features) for each loss and epoch budget; extra seeds at one
budget give the seed-to-seed spread of one setting (the seed also draws the
validation split).

    python experiments/cifar_budget.py          # 5 / 15 / 40 epochs; ce at 40 also seeds 1, 2
    python experiments/cifar_budget.py --epochs 5 --spread-epochs 0   # a part
    python experiments/cifar_budget.py --probe-refit --out runs/cifar_budget_refit \
        --epochs 80 160 --spread-epochs 80 --spread-losses ce supcon supcon+ce
        # the long budgets, the probe refit on train + validation once C is chosen

A folder holds one probe protocol: a run finished with another ``--probe-refit`` than the
one asked for stops the command (use another --out).

Every run is a run directory under --out; running the command again skips
finished runs and resumes interrupted ones. Run directories do not outlive a session
here, so each finished run is also merged into the committed record (--record,
experiments/results/cifar_budget.json: one entry per loss, epochs, seed, image size and
probe protocol; a run measured again replaces its entry), and OUT/budget.json,
OUT/budget.md and the figure (--figure) are drawn from the whole record: every budget
measured so far, in any session. In them an end-to-end loss (ce, supcon+ce) is one
series whatever the protocol (it ends without a probe); a pre-training loss is one series
per protocol. Results: docs/results.md.
"""

import argparse
import json
import logging
import statistics
from datetime import datetime, timezone
from pathlib import Path

DATASET = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz")
LOSSES = ("ce", "supcon", "supcon+ce")


def run_one(out, loss, epochs, seed, image_size, probe_refit=False):
    from keras_supcon.runs.rundir import RunDir
    from keras_supcon.training import train

    path = Path(out) / f"{loss}-e{epochs}-s{seed}"
    run = RunDir(path)
    if run.is_finished():
        settings = json.loads(run.file("config.json").read_text())["settings"]
        if settings.get("probe_refit", False) != probe_refit:
            raise SystemExit(f"error: {path} was run with probe_refit "
                             f"{settings.get('probe_refit', False)}, not {probe_refit}; "
                             "give the other protocol its own --out")
        return json.loads(run.file("metrics.json").read_text())
    resume = run.file("state.json").exists() and run.file("config.json").exists()
    settings = dict(dataset=DATASET, backbone="small_resnet", image_size=image_size,
                    loss=loss, epochs=epochs, seed=seed, probe_refit=probe_refit, verbose=0,
                    out=str(path))
    return train(resume=resume, overwrite=not resume, **settings)


RECORD = Path(__file__).resolve().parent / "results" / "cifar_budget.json"
KEY = ("loss", "epochs", "seed", "image_size", "probe_refit")


def run_entry(path):
    """The record's entry of the finished run directory ``path``."""
    from keras_supcon._cpu import cpu_kind

    metrics_file = Path(path) / "metrics.json"
    m = json.loads(metrics_file.read_text())
    config = json.loads((Path(path) / "config.json").read_text())
    s = config["settings"]
    finished = datetime.fromtimestamp(metrics_file.stat().st_mtime, timezone.utc)
    entry = {"loss": s["loss"], "epochs": s["epochs"], "seed": s["seed"],
             "image_size": s["image_size"], "probe_refit": s.get("probe_refit", False),
             "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
             "knn_accuracy": m["embedding"]["knn_accuracy"], "wall_time_s": m["wall_time_s"],
             "finished": finished.strftime("%Y-%m-%d"),
             "machine": config.get("cpu") or cpu_kind(),  # runs before 2026-12-02 lack "cpu"
             "source": f"run directory {Path(path).name}"}
    if "classifier_vs_knn" in m["embedding"]:  # runs before 2026-12-02 lack it
        entry["classifier_vs_knn"] = m["embedding"]["classifier_vs_knn"]
    return entry


def update_record(out, record_path):
    """Merge every finished run under ``out`` into the record (written atomically)."""
    from keras_supcon.runs.rundir import RunDir

    record_path = Path(record_path)
    record = json.loads(record_path.read_text()) if record_path.exists() else {"runs": []}
    entries = {tuple(e[k] for k in KEY): e for e in record["runs"]}
    for metrics_file in sorted(Path(out).glob("*/metrics.json")):
        entry = run_entry(metrics_file.parent)
        entries[tuple(entry[k] for k in KEY)] = entry
    record["runs"] = sorted(entries.values(), key=lambda e: tuple(str(e[k]) for k in KEY))
    RunDir(record_path.parent).write_json(record_path.name, record)
    return record


def collect(record, image_size):
    """The record's runs at ``image_size``: ``{series: {epochs: {key: [values per seed]}}}``;
    a series is the loss, with ", probe refit" for a pre-training loss's refit protocol."""
    from keras_supcon.training.settings import PRETRAIN_LOSSES

    results = {}
    for e in record["runs"]:
        if e["image_size"] != image_size:
            continue
        refit = e["probe_refit"] and e["loss"] in PRETRAIN_LOSSES
        series = e["loss"] + (", probe refit" if refit else "")
        slot = results.setdefault(series, {}).setdefault(e["epochs"], {})
        for key in ("accuracy", "knn_accuracy", "wall_time_s"):
            slot.setdefault(key, {})[e["seed"]] = e[key]  # one value per seed
    return {series: {epochs: {key: list(v.values()) for key, v in slot.items()}
                     for epochs, slot in budgets.items()}
            for series, budgets in results.items()}


def summarise(results):
    """``{loss: {epochs: {"accuracy": [...], "knn_accuracy": [...]}}}`` -> rows."""
    rows = []
    for loss, budgets in results.items():
        for epochs, values in sorted(budgets.items()):
            row = {"loss": loss, "epochs": epochs, "seeds": len(values["accuracy"])}
            for key in ("accuracy", "knn_accuracy", "wall_time_s"):
                v = values[key]
                row[key] = statistics.mean(v)
                row[f"{key}_sd"] = statistics.stdev(v) if len(v) > 1 else None
            rows.append(row)
    return rows


def markdown(rows):
    def cell(row, key):
        sd = row[f"{key}_sd"]
        return f"{row[key]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")

    lines = ["| series | epochs | seeds | test accuracy | kNN accuracy (k=20) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['epochs']} | {r['seeds']} | {cell(r, 'accuracy')} | "
                     f"{cell(r, 'knn_accuracy')} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def figure(rows, path, title):
    import matplotlib.ticker

    from keras_supcon.evaluation.figures import new_figure

    fig, axes = new_figure(1, 2, figsize=(11, 4.2))
    for ax, key, label in [(axes[0], "accuracy", "test accuracy (classifier)"),
                           (axes[1], "knn_accuracy", "kNN accuracy of the encoder (k=20)")]:
        for loss in dict.fromkeys(r["loss"] for r in rows):
            rs = [r for r in rows if r["loss"] == loss]
            ax.errorbar([r["epochs"] for r in rs], [r[key] for r in rs],
                        yerr=[r[f"{key}_sd"] or 0 for r in rs], marker="o", capsize=3,
                        label=loss)
        ax.set(xscale="log", xlabel="epochs (log scale)", ylabel=label, title=label)
        ticks = sorted({r["epochs"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/cifar_budget")
    p.add_argument("--losses", nargs="+", default=list(LOSSES))
    p.add_argument("--epochs", nargs="+", type=int, default=[5, 15, 40])
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seeds of every budget")
    p.add_argument("--spread-epochs", type=int, default=40,
                   help="the budget that also runs --spread-seeds")
    p.add_argument("--spread-seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--spread-losses", nargs="+", default=["ce"],
                   help="the losses that run --spread-seeds at --spread-epochs")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--probe-refit", action="store_true",
                   help="every run's linear probe refit on train + validation once its C is "
                        "chosen on validation (train --probe-refit); give it its own --out")
    p.add_argument("--record", default=str(RECORD),
                   help="the committed record every finished run is merged into")
    p.add_argument("--figure", default="docs/img/experiments/cifar_budget.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    plan = [(loss, e, s) for e in args.epochs for loss in args.losses for s in args.seeds]
    if args.spread_epochs in args.epochs:
        plan += [(loss, args.spread_epochs, s) for loss in args.spread_losses
                 for s in args.spread_seeds if s not in args.seeds]
    for loss, epochs, seed in plan:
        m = run_one(args.out, loss, epochs, seed, args.image_size, args.probe_refit)
        print(f"{loss} epochs {epochs} seed {seed}: test accuracy {m['accuracy']:.4f}, "
              f"kNN {m['embedding']['knn_accuracy']:.4f}, {m['wall_time_s']:.0f} s", flush=True)
    out = Path(args.out)
    rows = summarise(collect(update_record(out, args.record), args.image_size))
    (out / "budget.json").write_text(json.dumps(rows, indent=1))
    (out / "budget.md").write_text(markdown(rows))
    figure(rows, args.figure, f"CIFAR-10 subset, small_resnet at {args.image_size} px, "
                              "library defaults (mean ± sd over seeds where several; "
                              "probe refit: on train + val once C is chosen)")
    print(markdown(rows))


if __name__ == "__main__":
    main()
