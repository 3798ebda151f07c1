"""evaluation/figures.py: what the curves figure plots on which axis."""

import numpy as np
import pytest

from keras_supcon.evaluation.figures import plot_curves

PRETRAIN = [{"stage": "pretrain", "epoch": e, "loss": 5.0 - e, "val_loss": 5.2 - e}
            for e in (1, 2, 3)]
# The cached linear probe's history rows: one per C of the L-BFGS grid (not epochs)
GRID = [{"stage": "linear", "epoch": i + 1, "C": c, "accuracy": a, "val_accuracy": v}
        for i, (c, a, v) in enumerate([(1.0, 0.9, 0.85), (0.01, 0.6, 0.58), (100.0, 0.99, 0.8)])]


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines}


def test_curves_plot_the_probe_grid_against_c_not_epochs():
    fig = plot_curves(PRETRAIN + GRID, "t")
    ax_loss, ax_acc, ax_grid = fig.axes
    assert set(_lines(ax_loss)) == {"pretrain (train)", "pretrain (validation)"}
    assert not ax_acc.lines  # no stage trained epoch by epoch with an accuracy
    assert ax_grid.get_xscale() == "log" and ax_grid.get_xlabel().startswith("C")
    grid = _lines(ax_grid)
    assert grid["linear (validation)"] == ([0.01, 1.0, 100.0], [0.58, 0.85, 0.8])  # sorted by C
    assert grid["linear (train)"][1] == [0.6, 0.9, 0.99]


def test_curves_of_epoch_stages_have_two_panels():
    rows = PRETRAIN + [{"stage": "linear", "epoch": e, "loss": 1.0 / e, "accuracy": 0.5 + e / 10,
                        "val_accuracy": np.nan if e == 1 else 0.6} for e in (1, 2)]
    fig = plot_curves(rows)
    assert len(fig.axes) == 2
    assert _lines(fig.axes[1])["linear (train)"] == ([1, 2], [pytest.approx(0.6),
                                                              pytest.approx(0.7)])
