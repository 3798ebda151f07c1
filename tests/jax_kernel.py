"""The blocked kernel on the JAX backend, in float64; run in a subprocess by
``test_kernel.py`` (the backend is fixed when Keras is imported).

``KERAS_BACKEND=jax python tests/jax_kernel.py CASES.npz OUT.npz``: for each case of
``CASES.npz`` (``{name}/features [B, V, D]``, ``{name}/labels [B]``, ``{name}/block_rows``,
``{name}/replicas``), the loss and its gradient with respect to the features under
``jax.value_and_grad`` for every mode, on one device or summed over simulated replicas
(contiguous slices of the batch as anchors, the whole batch as contrast, as
``test_kernel._replica_losses`` does on TensorFlow).
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from keras_supcon.losses import kernel  # noqa: E402
from keras_supcon.losses.similarity import l2_normalize  # noqa: E402

TEMPERATURE = 0.3


def loss_fn(mode, labels, block_rows, replicas):
    def loss(features):
        z = l2_normalize(features.reshape(-1, features.shape[-1]))
        if replicas == 1:
            return kernel.similarity_softmax_loss(z, labels, temperature=TEMPERATURE, mode=mode,
                                                  block_rows=block_rows)
        n = z.shape[0]
        full = np.asarray(labels)
        counted = np.ones(n) if mode == "npairs" else np.array(
            [(full == y).sum() > 1 for y in full], float)
        bounds = np.linspace(0, n, replicas + 1).astype(int)
        return sum(kernel.similarity_softmax_loss(
            z[lo:hi], labels[lo:hi], z, labels, temperature=TEMPERATURE, mode=mode,
            offset=int(lo), count_fn=lambda c: jax.numpy.asarray(counted.sum(), c.dtype),
            block_rows=block_rows) for lo, hi in zip(bounds[:-1], bounds[1:]))

    return loss


def main(cases_path, out_path):
    cases = np.load(cases_path)
    names = sorted({k.split("/")[0] for k in cases})
    out = {}
    for name in names:
        features = jax.numpy.asarray(cases[f"{name}/features"], jax.numpy.float64)
        views = features.shape[1]
        labels = jax.numpy.asarray(np.repeat(cases[f"{name}/labels"], views))
        for mode in kernel.MODES:
            fn = loss_fn(mode, labels, int(cases[f"{name}/block_rows"]),
                         int(cases[f"{name}/replicas"]))
            value, grad = jax.jit(jax.value_and_grad(fn))(features)
            out[f"{name}/{mode}/loss"] = np.float64(value)
            out[f"{name}/{mode}/grad"] = np.asarray(grad)
            out[f"{name}/{mode}/dtype"] = str(value.dtype)
    np.savez(out_path, **out)
    print("ok", len(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
