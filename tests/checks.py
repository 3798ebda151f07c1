"""Checks several test modules share (imported like ``tolerances``)."""

import json
import subprocess
import sys


def batchnorm_momenta(*models):
    """The momentum of every BatchNorm layer of ``models`` (nested models included): a set,
    so ``== {0.8}`` says every one of them has the run's momentum."""
    from keras_supcon.models.batchnorm import batchnorm_layers

    return {round(float(layer.momentum), 6) for model in models
            for layer in batchnorm_layers(model)}


def architecture(model):
    """``[(layer name, class, [weight shapes], kernel L2)]`` of ``model``'s layers: equal
    lists mean the same layers with the same shapes and penalties."""
    rows = []
    for layer in model.layers:
        reg = getattr(layer, "kernel_regularizer", None)
        rows.append((layer.name, type(layer).__name__, [tuple(w.shape) for w in layer.weights],
                     round(float(reg.l2), 12) if reg is not None else None))
    return rows


def python_json(script, env, *, cwd=None, timeout=600):
    """Run ``python -c script`` in a fresh process with environment ``env``; it must
    succeed, and its last line of output is JSON: the value it printed."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
