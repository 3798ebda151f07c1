"""The blocked similarity-softmax kernel: any block size, and split across
replicas, gives the loss and gradient of the plain-loop float64 references."""

import numpy as np
import pytest
import tensorflow as tf
from test_losses import LABEL_PATTERNS, numeric_grad, ref_npairs, ref_supcon
from tolerances import EPS32, F64

from keras_supcon.losses import kernel
from keras_supcon.losses.similarity import l2_normalize

MODE_REFS = {
    "supcon_out": lambda f, y, t: ref_supcon(f, y, t, "out"),
    "supcon_in": lambda f, y, t: ref_supcon(f, y, t, "in"),
    "npairs": lambda f, y, t: _ref_npairs_features(f, y, t),
}


def _rows(f):
    flat = f.reshape(-1, f.shape[-1])
    return [list(r / np.linalg.norm(r)) for r in flat]


def _ref_npairs_features(f, y, t):
    rows = _rows(f)
    sim = [[sum(p * q for p, q in zip(a, b)) / t for b in rows] for a in rows]
    return ref_npairs(list(np.repeat(y, f.shape[1])), sim)


def _kernel_loss(z, labels, mode, temperature, block_rows):
    return kernel.similarity_softmax_loss(l2_normalize(z), labels, temperature=temperature,
                                          mode=mode, block_rows=block_rows)


@pytest.mark.parametrize("mode", kernel.MODES)
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("shape,block_rows", [((7, 2, 3), 1), ((7, 2, 3), 3), ((5, 3, 4), 4),
                                              ((9, 1, 5), 2), ((6, 2, 4), 100)])
def test_blocks_match_reference(mode, pattern, shape, block_rows):
    rng = np.random.default_rng(hash((mode, pattern, shape, block_rows)) % 2**32)
    feats = rng.normal(size=shape)
    labels = LABEL_PATTERNS[pattern](shape[0], rng)
    flat_labels = tf.constant(np.repeat(labels, shape[1]))
    temperature = 0.3

    x = tf.constant(feats.reshape(-1, shape[-1]), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _kernel_loss(x, flat_labels, mode, temperature, block_rows)
    grad = tape.gradient(loss, x).numpy().reshape(shape)

    ref = MODE_REFS[mode]
    np.testing.assert_allclose(float(loss), ref(feats, labels, temperature), rtol=1e-9, atol=1e-12)
    expected = numeric_grad(lambda f: ref(f, labels, temperature), feats)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def _replica_losses(z, labels, mode, temperature, replicas, ids_per=None):
    """The loss as each of ``replicas`` replicas computes it, without tf.distribute:
    contiguous slices of the batch as anchors, the whole batch as contrast."""
    zn = l2_normalize(z)
    n = z.shape[0]
    bounds = np.linspace(0, n, replicas + 1).astype(int)
    counts = []
    for r in range(replicas):
        # First pass: each replica's count of counted anchors (count_fn sums them).
        lo, hi = bounds[r], bounds[r + 1]
        sub = np.asarray(labels)[lo:hi]
        full = np.asarray(labels)
        if mode == "npairs":
            counts.append(hi - lo)
        else:
            counts.append(sum(1 for i, y in enumerate(sub)
                              if (full == y).sum() - 1 > 0))
    total_count = float(sum(counts))
    losses = []
    for r in range(replicas):
        lo, hi = bounds[r], bounds[r + 1]
        losses.append(kernel.similarity_softmax_loss(
            zn[lo:hi], labels[lo:hi], zn, labels, temperature=temperature, mode=mode,
            offset=int(lo), count_fn=lambda c: tf.constant(total_count, c.dtype),
            block_rows=2))
    return losses


@pytest.mark.parametrize("mode", kernel.MODES)
@pytest.mark.parametrize("replicas", [2, 3])
def test_replica_split_gives_global_loss_and_gradient(mode, replicas):
    """Keras sums the replicas' gradients (and their scalar losses' shares):
    that must be the loss and gradient of the whole batch."""
    rng = np.random.default_rng(replicas)
    z = tf.constant(rng.normal(size=(12, 5)), tf.float64)
    labels = tf.constant(rng.integers(0, 4, size=12))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        whole = _kernel_loss(z, labels, mode, 0.2, None)
        split = tf.add_n(_replica_losses(z, labels, mode, 0.2, replicas))
    np.testing.assert_allclose(float(split), float(whole), **F64)
    np.testing.assert_allclose(tape.gradient(split, z).numpy(), tape.gradient(whole, z).numpy(),
                               rtol=1e-10, atol=1e-14)


def test_default_block_rows_keeps_blocks_small():
    # A block holds BLOCK_ELEMENTS (4 MiB of float32) while that is at least
    # MIN_BLOCK_ROWS rows; beyond, MIN_BLOCK_ROWS rows (32 MiB at N = 16384).
    assert kernel.default_block_rows(2048) * 2048 == kernel.BLOCK_ELEMENTS
    assert kernel.default_block_rows(2048) == 512
    assert kernel.default_block_rows(16384) == kernel.MIN_BLOCK_ROWS == 512
    assert kernel.default_block_rows(10) == kernel.BLOCK_ELEMENTS // 10
    with pytest.raises(ValueError, match="mode must be one of"):
        kernel.similarity_softmax_loss(tf.ones((2, 2)), tf.constant([0, 1]), temperature=0.1,
                                       mode="cosine")


@pytest.mark.parametrize("mode", kernel.MODES)
def test_unknown_batch_size_and_xla_give_the_eager_loss(mode):
    """A graph traced with an unknown batch dimension (one block) and an XLA-compiled
    loop over blocks (padded: 15 rows in blocks of 4) give the eager loss and gradient."""
    rng = np.random.default_rng(5)
    z = tf.constant(rng.normal(size=(15, 6)), tf.float32)
    labels = tf.constant(rng.integers(0, 3, size=15))

    def value_and_grad(z, labels):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = _kernel_loss(z, labels, mode, 0.2, 4)
        return loss, tape.gradient(loss, z)

    expected = value_and_grad(z, labels)
    unknown = tf.function(value_and_grad, input_signature=[
        tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None], tf.int64)])
    for got in (unknown(z, labels), tf.function(value_and_grad, jit_compile=True)(z, labels)):
        np.testing.assert_allclose(float(got[0]), float(expected[0]), rtol=1e-5)
        np.testing.assert_allclose(got[1].numpy(), expected[1].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.float16
@pytest.mark.parametrize("mode", kernel.MODES)
@pytest.mark.parametrize("low", ["float16"])
def test_low_precision_products_keep_float32_statistics(mode, low):
    """With ``matmul_dtype`` the products take low-precision operands; the loss and the
    gradients stay float32 and within the operands' round-off of the float64 reference."""
    rng = np.random.default_rng(9)
    shape = (16, 2, 8)
    feats = rng.normal(size=shape)
    labels = rng.integers(0, 4, size=shape[0])
    x = tf.constant(feats.reshape(-1, shape[-1]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = kernel.similarity_softmax_loss(
            l2_normalize(x), tf.constant(np.repeat(labels, 2)), temperature=0.5, mode=mode,
            block_rows=12, matmul_dtype=low)
    grad = tape.gradient(loss, x)
    assert loss.dtype == tf.float32 and grad.dtype == tf.float32
    ref = MODE_REFS[mode]
    # float16 keeps 11 significant bits: similarities of unit vectors are off by up to
    # ~2^-11 / T, and the loss and gradient by about as much. (bfloat16 is not tested:
    # TensorFlow's eager bfloat16 matmul crashes under the suite's --isa avx2 cap.)
    eps = 2.0 ** -11
    np.testing.assert_allclose(float(loss), ref(feats, labels, 0.5), rtol=0, atol=8 * eps)
    expected = numeric_grad(lambda f: ref(f, labels, 0.5), feats)
    np.testing.assert_allclose(grad.numpy().reshape(shape), expected, rtol=0,
                               atol=8 * eps * np.abs(expected).max())


def test_jax_backend_gives_the_reference_loss_and_gradient(tmp_path):
    """Every mode on the JAX backend (float64, ``jax.value_and_grad`` under ``jit``): blocks
    looped over and padded, several views, anchors without a positive, and 2 replicas'
    shares summed, against the plain-loop float64 references."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(11)
    cases = {  # name: (features, labels, block_rows, replicas)
        "views2": (rng.normal(size=(7, 2, 3)), np.array([0, 1, 1, 2, 0, 2, 1]), 3, 1),
        # one view: labels 1, 2 and 4 have a single image, so those anchors have no positive
        "lonely": (rng.normal(size=(9, 1, 5)), np.array([0, 0, 1, 2, 3, 3, 4, 5, 5]), 2, 1),
        "replicas": (rng.normal(size=(8, 1, 4)), np.array([0, 1, 2, 3, 0, 1, 2, 5]), 3, 2),
    }
    arrays = {}
    for name, (feats, labels, block_rows, replicas) in cases.items():
        arrays.update({f"{name}/features": feats, f"{name}/labels": labels,
                       f"{name}/block_rows": block_rows, f"{name}/replicas": replicas})
    np.savez(tmp_path / "cases.npz", **arrays)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "jax_kernel.py"), str(tmp_path / "cases.npz"),
         str(tmp_path / "out.npz")], env=dict(os.environ, KERAS_BACKEND="jax"), cwd=root,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for name, (feats, labels, _, _) in cases.items():
        for mode in kernel.MODES:
            ref = MODE_REFS[mode]
            assert str(out[f"{name}/{mode}/dtype"]) == "float64"
            np.testing.assert_allclose(out[f"{name}/{mode}/loss"], ref(feats, labels, 0.3),
                                       rtol=1e-9, atol=1e-12, err_msg=f"{name} {mode}")
            expected = numeric_grad(lambda f: ref(f, labels, 0.3), feats)
            np.testing.assert_allclose(out[f"{name}/{mode}/grad"], expected, rtol=1e-5,
                                       atol=1e-7, err_msg=f"{name} {mode}")


@pytest.mark.parametrize("mode", kernel.MODES)
@pytest.mark.parametrize("temperature", [0.024, 0.026])
def test_float32_either_side_of_the_unshifted_limit(mode, temperature):
    """Up to 1/T = UNSHIFTED_MAX_INV_T rows are not shifted by their maximum before exp();
    on both sides, float32 rows near copies of each other (similarities near 1/T, where
    exp() is largest) keep the float64 reference's loss and gradient."""
    assert 1 / 0.026 < kernel.UNSHIFTED_MAX_INV_T < 1 / 0.024
    rng = np.random.default_rng(12)
    shape = (10, 2, 6)
    feats = (rng.normal(size=(3, 1, 6))[rng.integers(0, 3, size=shape[0])]
             + 0.02 * rng.normal(size=shape))
    labels = rng.integers(0, 3, size=shape[0])
    x = tf.constant(feats.reshape(-1, shape[-1]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _kernel_loss(x, tf.constant(np.repeat(labels, 2)), mode, temperature, 8)
    grad = tape.gradient(loss, x).numpy().reshape(shape)
    ref = MODE_REFS[mode]
    # Similarities of order 1/T carry float32 round-off of about EPS32 / T each.
    atol = 64 * EPS32 / temperature
    np.testing.assert_allclose(float(loss), ref(feats, labels, temperature), rtol=0, atol=atol)
    expected = numeric_grad(lambda f: ref(f, labels, temperature), feats)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=atol * np.abs(expected).max())
