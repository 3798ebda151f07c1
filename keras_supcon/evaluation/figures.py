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
    """Loss (left) and accuracy (right) per epoch, one line per stage and split."""
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(11, 4))
    stages = list(dict.fromkeys(r["stage"] for r in history))
    for stage in stages:
        rows = [r for r in history if r["stage"] == stage]
        epochs = [r["epoch"] for r in rows]
        for key, ax, style in [("loss", ax_loss, "-"), ("val_loss", ax_loss, "--"),
                               ("accuracy", ax_acc, "-"), ("val_accuracy", ax_acc, "--")]:
            values = [history_value(r, key) for r in rows]
            if any(v is not None for v in values):
                split = "validation" if key.startswith("val_") else "train"
                ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                        marker="o", ms=3, label=f"{stage} ({split})")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
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
