"""Figures of a run: training curves, t-SNE of embeddings, confusion matrix."""

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def new_figure(nrows=1, ncols=1, *, figsize=None, **subplot_kw):
    """``(fig, axes)`` like ``plt.subplots``, without pyplot: the figure belongs to
    no GUI backend (nothing changes in the user's matplotlib state, no window opens)
    and is freed with its last reference. ``fig.savefig`` writes any format; a
    notebook shows the returned figure when it is the cell's value."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplot_kw)


def history_value(row, key):
    """``row[key]`` of a history row; for ``accuracy`` / ``val_accuracy`` also the
    joint model's ``probabilities_accuracy`` (``--loss supcon+ce``)."""
    value = row.get(key)
    if value is None and key.endswith("accuracy"):
        value = row.get(key.replace("accuracy", "probabilities_accuracy"))
    return value


def plot_curves(history, title=""):
    """Loss (left) and accuracy (middle) per epoch, one line per stage and split. A probe
    fitted on cached features by logistic regression is no epoch-wise training: its rows
    (with a ``C``) are the grid of L2 strengths, shown against C in a third panel."""
    grid = [r for r in history if history_value(r, "C") is not None]
    epochs_rows = [r for r in history if history_value(r, "C") is None]
    fig, axes = new_figure(1, 3 if grid else 2, figsize=(16 if grid else 11, 4))
    ax_loss, ax_acc = axes[:2]
    for stage in dict.fromkeys(r["stage"] for r in epochs_rows):
        rows = [r for r in epochs_rows if r["stage"] == stage]
        _plot_splits(ax_loss, ax_acc, [r["epoch"] for r in rows], rows, stage)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", ylim=(0, 1))
    if grid:
        rows = sorted(grid, key=lambda r: float(history_value(r, "C")))
        _plot_splits(None, axes[2], [float(history_value(r, "C")) for r in rows], rows,
                     rows[0]["stage"])
        axes[2].set(xscale="log", xlabel="C (inverse L2 strength)", ylabel="accuracy",
                    title="Linear probe: accuracy against C", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _plot_splits(ax_loss, ax_acc, x, rows, stage):
    for key, ax, style in [("loss", ax_loss, "-"), ("val_loss", ax_loss, "--"),
                           ("accuracy", ax_acc, "-"), ("val_accuracy", ax_acc, "--")]:
        values = [history_value(r, key) for r in rows]
        if ax is not None and any(v is not None for v in values):
            split = "validation" if key.startswith("val_") else "train"
            ax.plot(x, [np.nan if v is None else v for v in values], style, marker="o", ms=3,
                    label=f"{stage} ({split})")


def save_evaluation_figures(run, metrics, title, *, curves, codes, labels, class_names, what,
                            seed=0):
    """The figures every job writes into its run directory ``run``: ``curves.png``
    (the figure ``curves``), ``tsne.png`` (t-SNE of ``codes``, described as ``what``) and
    ``confusion.png`` (``metrics["confusion_matrix"]``)."""
    run.save_figure(curves, "curves.png")
    points, point_labels = tsne_embedding(codes, labels, max_per_class=500, seed=seed)
    run.save_figure(plot_tsne(points, point_labels, class_names, f"t-SNE of {what}\n{title}"),
                    "tsne.png")
    run.save_figure(plot_confusion(metrics["confusion_matrix"], class_names,
                                   f"Confusion matrix (test)\n{title}"), "confusion.png")


def plot_layerwise_curves(history, finetune_stage, title=""):
    """Layer-wise pre-training: reconstruction error per epoch of each auto-encoder (left,
    log scale), and the loss (middle) and accuracy (right) of stage ``finetune_stage``."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax_ae, ax_loss, ax_acc) = new_figure(1, 3, figsize=(15, 4))
    stages = list(dict.fromkeys(r["stage"] for r in history))
    for i, stage in enumerate(s for s in stages if s != finetune_stage):
        rows = [r for r in history if r["stage"] == stage]
        epochs = [r["epoch"] for r in rows]
        for key, style in (("loss", "-"), ("val_loss", "--")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                split = "validation" if key.startswith("val_") else "train"
                ax_ae.plot(epochs, [np.nan if v is None else v for v in values], style,
                           color=f"C{i % 10}", marker="o", ms=3, label=f"{stage} ({split})")
    rows = [r for r in history if r["stage"] == finetune_stage]
    epochs = [r["epoch"] for r in rows]
    for key, ax, style in (("loss", ax_loss, "-"), ("val_loss", ax_loss, "--"),
                           ("accuracy", ax_acc, "-"), ("val_accuracy", ax_acc, "--")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            split = "validation" if key.startswith("val_") else "train"
            ax.plot(epochs, [np.nan if v is None else v for v in values], style, color="C0",
                    marker="o", ms=3, label=split)
    ax_ae.set(xlabel="epoch", ylabel="mean squared error",
              title="Auto-encoder reconstruction error" if ax_ae.lines
              else "No pre-training (random initialisation)")
    if ax_ae.lines:
        ax_ae.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Fine-tuning loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Fine-tuning accuracy", ylim=(0, 1))
    for ax in (ax_ae, ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7 if len(ax.lines) > 6 else 8, ncol=2 if len(ax.lines) > 6 else 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_pseudo_labelling(rows, threshold, title=""):
    """Pseudo-labelling study: test accuracy, macro F1 and the kept fraction of the
    unlabelled images (confidence >= ``threshold``) per labelled:unlabelled ratio
    (``rows``: one result row per ratio, as ``pseudo_label.json`` holds them)."""
    fig, ax = new_figure(figsize=(6.5, 4))
    x = np.arange(len(rows))
    ax.plot(x, [r["test"]["accuracy"] for r in rows], "o-", label="test accuracy")
    ax.plot(x, [r["test"]["f1_macro"] for r in rows], "s--", label="test macro F1")
    kept = [r["kept"] / r["unlabelled"] if r["unlabelled"] else np.nan for r in rows]
    ax.plot(x, kept, "^:", label=f"kept fraction (conf. >= {threshold:g})")
    ax.set(xticks=x, xticklabels=[f"1:{r['ratio']:g}" for r in rows],
           xlabel="labelled : unlabelled", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def subsample_per_class(labels, max_per_class, seed=0):
    """Indices with at most ``max_per_class`` items of each label."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.permutation(idx)[:max_per_class] if len(idx) > max_per_class else idx)
    return np.sort(np.concatenate(keep))


def tsne_embedding(embeddings, labels, *, max_per_class=500, seed=0):
    """2-D t-SNE of at most ``max_per_class`` embeddings per class: ``(points, labels)``."""
    from sklearn.manifold import TSNE

    idx = subsample_per_class(np.asarray(labels), max_per_class, seed)
    x = np.asarray(embeddings, dtype=np.float64)[idx]
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                  ).fit_transform(x)
    return points, np.asarray(labels)[idx]


def plot_tsne(points, labels, class_names, title=""):
    fig, ax = new_figure(figsize=(7, 6))
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(c % cmap.N), label=name)
    ax.set(title=title or "t-SNE of test-set encoder embeddings", xticks=[], yticks=[])
    if len(class_names) <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_confusion(confusion, class_names, title=""):
    cm = np.asarray(confusion)
    n = len(class_names)
    fig, ax = new_figure(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, label="test images")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="true class",
           title=title or "Confusion matrix (test split)")
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    return fig


def plot_sweep(rows, title=""):
    """Test accuracy (left axis) and zipped model size (right axis) against the
    achieved sparsity of the pruned kernels; the dense model is the first row."""
    fig, ax = new_figure(figsize=(6.5, 4))
    dense, pruned = rows[0], rows[1:]
    x = [100 * r["achieved_sparsity"] for r in pruned]
    ax.plot(x, [r["accuracy"] for r in pruned], "o-", color="C0", label="pruned, fine-tuned")
    ax.axhline(dense["accuracy"], color="C0", ls="--", lw=1, label="dense (trained run)")
    ax.set(xlabel="sparsity of prunable kernels (%)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    size = ax.twinx()
    size.plot(x, [r["zipped_bytes"] / 1024 for r in pruned], "s:", color="C1",
              label="zipped SavedModel")
    size.set_ylabel("zipped SavedModel size (KB)", color="C1")
    lines = ax.get_legend_handles_labels()
    more = size.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
