"""Results pages: a folder of run directories -> markdown tables, CSV and figures.

The same code writes the ablation report (``ablation.md``) and the page of
``python -m keras_supcon.report RUNS_DIR``:

- one table per loss, rows = backbones (and any other setting that differs
  between the runs), columns F1 | Accuracy | Precision | Recall (macro, test);
- embedding quality of every run (kNN accuracy, silhouette, P@1, R@K, MAP@R);
- for each contrastive loss beside ``ce``, the difference to ``ce`` per backbone;
- a CSV with one row per run, a grouped bar chart, the curves of every run on
  one figure, and links to each run's t-SNE and confusion matrix.
"""

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

from keras_supcon.errors import ConfigError, RunDirError
from keras_supcon.evaluation.figures import history_value, new_figure
from keras_supcon.evaluation.tables import markdown_table
from keras_supcon.losses.registry import loss_names, loss_specific_settings, uses_setting
from keras_supcon.runs.callbacks import read_history
from keras_supcon.runs.rundir import CONFIG_FILE, STATE_FILE, RunDir

CLASSIFICATION = [("f1_macro", "F1"), ("accuracy", "Accuracy"), ("precision_macro", "Precision"),
                  ("recall_macro", "Recall")]
COMPARED = CLASSIFICATION + [("knn_accuracy", "kNN acc."), ("map_at_r", "MAP@R")]
EMBEDDING = [("knn_accuracy", "kNN acc."), ("silhouette", "Silhouette"),
             ("precision_at_1", "P@1"), ("recall_at_4", "R@4"), ("recall_at_8", "R@8"),
             ("map_at_r", "MAP@R")]
# Settings that never count as "differing between runs" in the tables.
_IGNORED = {"out", "verbose", "backbone", "loss", "data_dir"}


@dataclass
class RunResult:
    path: Path
    settings: dict
    metrics: dict = None  # None: the run is not finished
    error: str = None  # set for a failed ablation combination

    @property
    def name(self):
        return self.path.name

    @property
    def status(self):
        return "failed" if self.error else ("finished" if self.metrics else "unfinished")

    def value(self, key):
        """A flat metric: classification keys, embedding keys, ``recall_at_K``."""
        m = self.metrics or {}
        if key in m:
            return m[key]
        emb = m.get("embedding") or {}
        if key.startswith("recall_at_"):
            return (emb.get("recall_at_k") or {}).get(key.rsplit("_", 1)[1])
        return emb.get(key)


def is_run_dir(path):
    return (Path(path) / CONFIG_FILE).is_file()


def load_run(path, error=None):
    """A :class:`RunResult`; a finished run must have a readable ``metrics.json``."""
    run = RunDir(path)
    if not run.file(CONFIG_FILE).exists():
        return RunResult(run.path, {}, None, error or f"no {CONFIG_FILE}: the run never started")
    settings = run.read_json(CONFIG_FILE).get("settings", {})
    metrics = None
    finished = run.file(STATE_FILE).exists() and run.is_finished()
    if finished or run.file("metrics.json").exists():
        metrics = run.read_json("metrics.json")  # missing / corrupt: RunDirError naming it
        missing = [k for k, _ in CLASSIFICATION if not isinstance(metrics.get(k), (int, float))]
        if missing:
            raise RunDirError(f"{run.file('metrics.json')} lacks {', '.join(missing)}")
    return RunResult(run.path, settings, metrics, error)


def collect_runs(folder):
    """Every run directory directly inside ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.is_dir() and is_run_dir(p))
    runs = [load_run(p) for p in paths]
    if not any(r.metrics for r in runs):
        what = (f"{len(runs)} run directories, none finished" if runs
                else "no run directories (folders with config.json)")
        raise RunDirError(f"{folder} holds {what}; nothing to report")
    return runs


def _applies(key, run):
    return uses_setting(run.settings.get("loss"), key)


def varying_settings(runs):
    """Settings (other than backbone / loss) whose value differs between the runs
    they apply to (a temperature does not apply to ce runs)."""
    keys = sorted(set().union(*(r.settings for r in runs)) - _IGNORED)
    return [k for k in keys
            if len({repr(r.settings.get(k)) for r in runs if r.settings and _applies(k, r)}) > 1]


def swept_settings(runs, varying):
    """Numeric varying settings that take 2+ values for one backbone and loss (an
    image size that only follows the backbone is not a sweep)."""
    swept = []
    for k in varying:
        applied = [r for r in runs if _applies(k, r)]
        if not all(isinstance(r.settings.get(k), (int, float)) for r in applied):
            continue
        groups = {}
        for r in applied:
            groups.setdefault((r.settings.get("backbone"), r.settings.get("loss")),
                              set()).add(r.settings[k])
        if any(len(values) > 1 for values in groups.values()):
            swept.append(k)
    return swept


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _row_label(run, varying):
    s = run.settings
    extra = ", ".join(f"{k}={s.get(k)}" for k in varying if _applies(k, run))
    return s.get("backbone", run.name) + (f" ({extra})" if extra else "")


def _group_label(run, varying):
    """What a run is compared on across losses: backbone and shared varying settings."""
    return _row_label(run, [k for k in varying if k not in loss_specific_settings()])


def _status_cell(run):
    return "failed: " + run.error if run.error else "not finished"


def loss_tables(runs, varying):
    """``{loss: markdown}``: rows = backbones (+ varying settings), F1 | Acc | Prec | Rec."""
    tables = {}
    for loss in dict.fromkeys(r.settings.get("loss", "?") for r in runs):
        rows = []
        for r in (r for r in runs if r.settings.get("loss", "?") == loss):
            if r.metrics:
                rows.append([_row_label(r, varying),
                             *(_fmt(r.value(k)) for k, _ in CLASSIFICATION)])
            else:
                rows.append([_row_label(r, varying), _status_cell(r), "", "", ""])
        tables[loss] = markdown_table(["Backbone", *(h for _, h in CLASSIFICATION)], rows)
    return tables


def embedding_table(runs, varying):
    rows = [[_row_label(r, varying), r.settings.get("loss", "?"),
             *(_fmt(r.value(k)) for k, _ in EMBEDDING)] for r in runs if r.metrics]
    return markdown_table(["Backbone", "Loss", *(h for _, h in EMBEDDING)], rows)


def difference_tables(runs, varying, baseline="ce"):
    """``{loss: markdown}`` for each loss beside ``baseline``: both values and the
    difference (loss - baseline) of each metric, per backbone."""
    def key(r):
        return _group_label(r, varying)

    base = {key(r): r for r in runs if r.settings.get("loss") == baseline and r.metrics}
    tables = {}
    for loss in dict.fromkeys(r.settings.get("loss") for r in runs):
        if loss == baseline:
            continue
        rows = []
        for r in (r for r in runs if r.settings.get("loss") == loss and r.metrics):
            b = base.get(key(r))
            if b is not None:
                rows.append([_row_label(r, varying),
                             *(_fmt_change(b.value(k), r.value(k)) for k, _ in COMPARED)])
        if rows:
            tables[loss] = markdown_table(["Backbone", *(h for _, h in COMPARED)], rows)
    return tables


def _fmt_change(before, after):
    """``"0.5123 → 0.5501 (+0.0378)"``."""
    if before is None or after is None:
        return f"{_fmt(before)} → {_fmt(after)}"
    return f"{before:.4f} → {after:.4f} ({after - before:+.4f})"


CSV_COLUMNS = ["run", "status", "backbone", "loss", "dataset", "image_size", "epochs",
               "linear_epochs", "batch_size", "temperature", "accuracy", "f1_macro",
               "precision_macro", "recall_macro", "knn_accuracy", "silhouette",
               "precision_at_1", "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8",
               "map_at_r", "wall_time_s", "error"]


def results_csv(runs, varying=()):
    columns = CSV_COLUMNS[:-1] + [k for k in varying if k not in CSV_COLUMNS] + ["error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in runs:
        row = {"run": r.name, "status": r.status, "error": r.error or ""}
        for k in columns:
            if k in row:
                continue
            v = r.value(k) if r.metrics and r.value(k) is not None else r.settings.get(k)
            row[k] = "" if v is None else v
        writer.writerow(row)
    return buf.getvalue()


# ---------------------------------------------------------------------- figures
def _setting_line(runs):
    s = next(r.settings for r in runs if r.settings)
    probe = ("probe on cached features" if s.get("probe_fit") == "cached"
             else f"+{s.get('linear_epochs')} linear")  # runs before probe_fit: images
    return (f"{Path(str(s.get('dataset'))).name}, epochs {s.get('epochs')}"
            f" ({probe} for pre-training losses), "
            f"batch {s.get('batch_size')}, seed {s.get('seed')}")


def plot_ablation_bars(runs, varying, metrics=(("accuracy", "test accuracy"),
                                               ("f1_macro", "test macro F1"),
                                               ("knn_accuracy", "kNN accuracy (k=20)"))):
    """Grouped bars: groups = backbones (+ varying settings), one bar per loss."""
    done = [r for r in runs if r.metrics]
    groups = list(dict.fromkeys(_group_label(r, varying) for r in done))
    losses = list(dict.fromkeys(r.settings.get("loss") for r in done))
    fig, axes = new_figure(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 4.2),
                             squeeze=False)
    width = 0.8 / max(len(losses), 1)
    x = np.arange(len(groups))
    for ax, (key, label) in zip(axes[0], metrics):
        for i, loss in enumerate(losses):
            values = []
            for g in groups:
                match = [r for r in done if r.settings.get("loss") == loss and
                         _group_label(r, varying) == g]
                v = match[0].value(key) if match else None
                values.append(np.nan if v is None else v)
            bars = ax.bar(x + (i - (len(losses) - 1) / 2) * width, values, width, label=loss)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=label, ylim=(0, 1), title=label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(title="loss", fontsize=8)
    fig.suptitle(f"Test metrics per backbone and loss ({_setting_line(runs)})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_all_curves(runs, varying):
    """Left: validation accuracy of each run's classifier stage per epoch.
    Right: training loss of each run's first stage (CE or contrastive)."""
    fig, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(r for r in runs if r.metrics):
        history = read_history(RunDir(r.path))
        label = f"{_row_label(r, varying)} | {r.settings.get('loss')}"
        color = matplotlib.colormaps["tab10"](i % 10)
        stage = "ce" if r.settings.get("loss") in loss_names("end_to_end") else "linear"
        rows = [h for h in history if h["stage"] == stage]
        ax_acc.plot([h["epoch"] for h in rows], [history_value(h, "val_accuracy") for h in rows],
                    marker="o", ms=3, color=color, ls="-" if stage == "ce" else "--",
                    label=label)
        first = history[0]["stage"] if history else None
        rows = [h for h in history if h["stage"] == first]
        ax_loss.plot([h["epoch"] for h in rows], [h.get("loss") for h in rows], marker="o",
                     ms=3, color=color, ls="-" if stage == "ce" else "--", label=label)
    ax_acc.set(xlabel="epoch of the classifier stage (ce: end to end; dashed: linear on "
                      "frozen encoder)", ylabel="validation accuracy", ylim=(0, 1),
               title="Validation accuracy per epoch")
    ax_loss.set(xlabel="epoch of the first stage (ce or contrastive pre-training)",
                ylabel="training loss (scales differ between losses)",
                title="Training loss per epoch")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_acc.legend(fontsize=7, loc="best")
    fig.suptitle(f"All runs ({_setting_line(runs)})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_setting_sweep(runs, setting):
    """Test accuracy and kNN accuracy against a numeric setting, one line per
    backbone and loss (the paper's temperature / batch-size figures)."""
    fig, ax = new_figure(figsize=(6.5, 4.2))
    done = [r for r in runs if r.metrics and _applies(setting, r)]
    for backbone, loss in dict.fromkeys((r.settings.get("backbone"), r.settings.get("loss"))
                                        for r in done):
        rs = sorted((r for r in done if r.settings.get("backbone") == backbone and
                     r.settings.get("loss") == loss), key=lambda r: r.settings[setting])
        xs = [r.settings[setting] for r in rs]
        ax.plot(xs, [r.value("accuracy") for r in rs], "o-", label=f"{backbone} {loss}: "
                                                                    "linear test accuracy")
        ax.plot(xs, [r.value("knn_accuracy") for r in rs], "s--",
                label=f"{backbone} {loss}: kNN accuracy")
    if setting in ("temperature", "batch_size", "lr"):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r.settings[setting] for r in done}),
                      [f"{v:g}" for v in sorted({r.settings[setting] for r in done})])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel=setting.replace("_", " "), ylabel="test accuracy",
           title=f"Sensitivity to {setting.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_setting_line(runs), fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- the page
def check_report_name(name, what="report name"):
    """``name`` becomes ``<name>.md`` etc. inside the folder: no path, no hidden file."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"{what} must be a plain file name; got {name!r}")


def _figures_section(out, name, runs, done, varying):
    """The report's figures, written into ``out``; their lines of the page (with the
    per-run figures' links)."""
    lines = []
    figures = [("bars", "Test metrics per backbone and loss", plot_ablation_bars(runs, varying)),
               ("curves", "Curves of every run", plot_all_curves(runs, varying))]
    for k in swept_settings(done, varying):
        figures.append((f"sweep_{k}", f"Sensitivity to {k}", plot_setting_sweep(done, k)))
    lines.append("## Figures\n")
    for suffix, caption, fig in figures:
        out.save_figure(fig, f"{name}_{suffix}.png")
        lines.append(f"![{caption}]({name}_{suffix}.png)\n")
    lines.append("Per run (test split): t-SNE of encoder embeddings, confusion matrix, curves.\n")
    rows = []
    for r in done:
        rel = Path(os.path.relpath(r.path, out.path))
        rows.append((_row_label(r, varying), r.settings.get("loss"),
                     f"[t-SNE]({rel / 'tsne.png'})", f"[confusion]({rel / 'confusion.png'})",
                     f"[curves]({rel / 'curves.png'})", _fmt(r.metrics.get("wall_time_s"), 0)))
    lines.append(markdown_table(["Backbone", "Loss", "t-SNE", "confusion matrix", "curves",
                                 "wall time (s)"], rows))
    return lines


def write_report(folder, run_paths=None, *, name="report", failed=None, title="Results"):
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>_*.png`` into ``folder``.

    ``run_paths``: the run directories to report (default: every run directory
    in ``folder``); ``failed``: ``{run name: error}`` of ablation combinations
    that crashed. Returns the path of the markdown page.
    """
    check_report_name(name)
    folder = Path(folder)
    failed = failed or {}
    if run_paths is None:
        runs = collect_runs(folder)
    else:
        runs = [load_run(p, failed.get(Path(p).name)) for p in run_paths]
        if not any(r.metrics for r in runs):
            raise RunDirError(f"{folder}: no combination finished; nothing to report "
                              f"(failed: {', '.join(failed) or 'none'})")
    for r in runs:  # a failure from an earlier attempt is not kept once a run finished
        if r.metrics and r.error:
            r.error = None
    done = [r for r in runs if r.metrics]
    varying = varying_settings(done)
    out = RunDir(folder)
    lines = [f"# {title}\n",
             f"{len(done)} of {len(runs)} runs finished. Shared settings: "
             f"{_setting_line(done)}. Metrics on the test split; macro averages over "
             "classes. Settings that differ between runs: "
             f"{', '.join(varying) if varying else 'none besides backbone and loss'}.\n"]
    lines.append("## Classification (linear evaluation for contrastive losses)\n")
    for loss, table in loss_tables(runs, varying).items():
        lines += [f"### {loss}\n", table]
    lines += ["## Embedding quality (encoder output, cosine similarity)\n",
              "kNN: k = 20 nearest training embeddings vote (train = index, test = queries). "
              "Silhouette (cosine), Precision@1, Recall@K and MAP@R: retrieval within the "
              "test set.\n", embedding_table(runs, varying)]
    diffs = difference_tables(runs, varying)
    for loss, table in diffs.items():
        lines += [f"## {loss} vs ce\n", f"Each cell: ce → {loss} (difference).\n", table]
    not_done = [r for r in runs if not r.metrics]
    if not_done:
        lines += ["## Not finished\n",
                  markdown_table(["run", "status"], [(r.name, _status_cell(r)) for r in not_done])]

    out.write_text(f"{name}.csv", results_csv(runs, varying))
    lines += _figures_section(out, name, runs, done, varying)
    return out.write_text(f"{name}.md", "\n".join(lines))
