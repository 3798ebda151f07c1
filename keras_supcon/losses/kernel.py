"""The fused kernel behind SupCon, SimCLR and npairs: softmax cross-entropy over
a similarity matrix, computed in row blocks with an analytic gradient.

Anchors ``a`` (``[n, D]``) are compared with a contrast set ``c`` (``[m, D]``),
both L2-normalised; on one device ``c`` is ``a``, across replicas ``c`` is the
global batch and anchor ``i`` sits at row ``offset + i`` of it. With
``S = a c^T / T`` and ``same_ij = [y_i == y'_j]``:

- ``"supcon_out"`` (SupCon eq. 2): softmax over ``j != self``, positives
  ``P_ij = same_ij, j != self``; ``L_i = lse_i - sum_j P_ij S_ij / |P_i|``;
  ``dL_i/dS_ij = softmax_ij - P_ij / |P_i|``.
- ``"supcon_in"`` (eq. 3): ``L_i = lse_i - log(sum_j P_ij exp S_ij / |P_i|)``;
  ``dL_i/dS_ij = softmax_ij - P_ij exp S_ij / sum_k P_ik exp S_ik``.
- ``"npairs"`` (``tfa.losses.npairs_loss``): softmax over all ``j`` (self
  included), targets ``Y_ij = same_ij / sum_k same_ik``;
  ``L_i = lse_i - sum_j Y_ij S_ij``; ``dL_i/dS_ij = softmax_ij - Y_ij``.

The loss is the mean of ``L_i`` over the counted anchors (SupCon: anchors with
a positive; npairs: all). How it is computed:

- **Row blocks in a loop.** The ``[n, m]`` matrices exist one block of
  ``block_rows`` rows at a time, inside a compiled loop (``lax.fori_loop``; a
  ``tf.while_loop`` with two iterations in flight), so one or two blocks are alive.
  A block holds whole rows, so each row's log-sum-exp is complete within it and
  nothing is recomputed. Memory: the inputs, their gradients and one block,
  ``O(N * D + block_rows * m)``: with a fixed number of rows per block, a flat
  number of bytes per row of the batch whatever ``N``.
- **The gradient in the same pass.** The block's softmax gives ``dL/dS`` at
  once, so a forward + backward costs the three matrix products of ``S = a c^T``
  and of its gradient (``G c`` and ``G^T a``), as the bare ``sum(a @ a.T)``
  does, plus elementwise work. Inf-CL (Wang et al. 2024) saves only per-row
  statistics and recomputes each tile in the backward pass (a fourth product) to
  keep memory flat with tiles narrower than a row; here the blocks hold whole
  rows and the saved state is the gradient itself (``2 N D`` numbers), so the
  memory is as flat without the fourth product. When only the value is needed
  (evaluation), graph and XLA compilers drop the gradient work.
- **Low precision in, float32 statistics.** With ``matmul_dtype`` (``bfloat16``
  or ``float16``, the compute dtype of a mixed-precision policy) the three
  products take operands in that dtype; the similarities are cast to the
  statistics' dtype (float32, float64 for float64 inputs) before the
  log-sum-exp, and the loss and the gradients are accumulated in it.
"""

import math

from keras import ops

MODES = ("supcon_out", "supcon_in", "npairs")

# Elements of one block of the similarity matrix (4 MiB of float32) while a block
# has at least MIN_BLOCK_ROWS rows.
BLOCK_ELEMENTS = 1 << 20
# Fewest rows per block. XLA's CPU code for matrix products of few rows is far
# slower than for larger ones: at N = 16384 (B = 8192) SupCon under XLA took
# 7.0x the similarity-product floor with 64-row blocks, 2.18x with 128, 1.90x
# with 256, 1.92x with 512 and 1.86x with 1024, while graph mode stayed at
# 1.65x-1.80x (docs/performance.md, "XLA at B = 8192"). From m = 2048 contrast
# rows on, every block has these rows: the memory per row of the batch is flat.
MIN_BLOCK_ROWS = 512


def default_block_rows(num_contrast):
    """Rows per block for a contrast set of ``num_contrast``: ``BLOCK_ELEMENTS /
    num_contrast``, at least :data:`MIN_BLOCK_ROWS`."""
    return max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(int(num_contrast), 1))


def _block_loss_and_grad(s, same, not_self, valid, mode):
    """Per-row loss ``[r]`` and counted-row weights ``[r]`` (both zero on rows that are
    not ``valid``, i.e. padding) and ``dL_i/dS`` ``[r, m]`` of one block.

    Each ``[r, m]`` operation is a pass over the block (graph mode fuses none), so the
    gradient is formed as ``e * (w / sum e) - targets * (w / ...)`` with per-row factors:
    three passes where ``(softmax - targets) * w`` takes four."""
    dtype = s.dtype
    valid = ops.expand_dims(ops.cast(valid, dtype), 1)
    if mode == "npairs":
        row_max = ops.max(s, axis=1, keepdims=True)
        e = ops.exp(s - row_max)
        targets = ops.cast(same, dtype)
        # (at least 1: a row's own column; padding rows may match nothing)
        num_same = ops.maximum(ops.sum(targets, axis=1, keepdims=True), 1.0)
        denominator = ops.sum(e, axis=1, keepdims=True)
        per_row = (ops.log(denominator) + row_max
                   - ops.sum(targets * s, axis=1, keepdims=True) / num_same)
        grad = e * (valid / denominator) - targets * (valid / num_same)
        return ops.squeeze(per_row * valid, 1), ops.squeeze(valid, 1), grad

    pos = ops.cast(ops.logical_and(same, not_self), dtype)
    num_pos = ops.sum(pos, axis=1, keepdims=True)
    # The self term is left out of the softmax with where(), not by multiplying
    # exp() by zero: exp(1/T - max) overflows at low temperatures and inf * 0 is NaN.
    others = ops.where(not_self, s, ops.convert_to_tensor(-1e9, dtype=dtype))
    row_max = ops.max(others, axis=1, keepdims=True)
    e = ops.exp(others - row_max)
    denominator = ops.sum(e, axis=1, keepdims=True)
    safe_num_pos = ops.maximum(num_pos, 1.0)
    has_pos = ops.cast(num_pos > 0, dtype)
    counted = has_pos * valid
    if mode == "supcon_out":
        per_row = (ops.log(denominator) + row_max
                   - ops.sum(pos * s, axis=1, keepdims=True) / safe_num_pos)
        grad = e * (counted / denominator) - pos * (counted / safe_num_pos)
    else:
        pos_e = pos * e
        # Rows without positives get sum 1 (log 0 avoided); they are not counted.
        # exp(-row_max) cancels between the two logs.
        pos_sum = ops.sum(pos_e, axis=1, keepdims=True) + (1.0 - has_pos)
        per_row = ops.log(denominator) - ops.log(pos_sum / safe_num_pos)
        grad = e * (counted / denominator) - pos_e * (counted / pos_sum)
    return ops.squeeze(per_row * counted, 1), ops.squeeze(counted, 1), grad


def _loop(steps, body, init):
    """``ops.fori_loop(0, steps, body, init)`` with at most two iterations in flight.

    TensorFlow's ``while_loop`` runs up to 10 iterations at once by default
    (``parallel_iterations``), each holding its block, and Keras' ``fori_loop`` does not
    let us change it: at N = 65536 graph mode held 36.5 KiB a row against 15-16 KiB at
    N = 4096-16384. Two at once keeps it flat (18.0 KiB a row at N = 16384 and 65536)
    and lets one block's elementwise work overlap the next one's products: SupCon at
    B = 8192 took 1.51x the floor, against 1.67x with one at a time and 1.59x with 10
    (``python -m benchmarks.block_rows --batch-size 8192 --rows 512 --modes graph``).
    XLA runs its loops one iteration at a time."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return ops.fori_loop(0, steps, body, init)
    import tensorflow as tf

    return tuple(tf.while_loop(lambda i, carry: i < steps,
                               lambda i, carry: (i + 1, tuple(body(i, carry))),
                               (tf.constant(0), tuple(init)), parallel_iterations=2)[1])


def _summed_loss_and_grads(a, c, anchor_labels, contrast_labels, *, inv_t, mode, offset,
                           rows, product_dtype):
    """``(sum of L_i, number of counted anchors, dSum/da, dSum/dc)`` of anchors ``a``
    against ``c``, ``rows`` anchors at a time (one block when ``a`` has at most ``rows``
    rows or its number of rows is not static, e.g. a TensorFlow graph traced with an
    unknown batch dimension; else a loop over blocks, ``a`` padded with zero rows)."""
    dtype = a.dtype
    product_dtype = product_dtype or dtype
    n, m, width = a.shape[0], c.shape[0], a.shape[1]
    blocks = 1 if n is None or n <= rows else math.ceil(n / rows)
    # convert_to_tensor(dtype=...), not cast(): cast() would round 1/T to float32 first.
    inv_t_tensor = ops.convert_to_tensor(inv_t, dtype=dtype)
    a_scaled = ops.cast(a * inv_t_tensor, product_dtype)
    c_product = ops.cast(c, product_dtype)
    c_t = ops.transpose(c_product)  # once, outside the loop
    columns = ops.expand_dims(ops.arange(ops.shape(c)[0]), 0)

    def block(a_block, labels, first):
        """Loss sum, count and the two gradients of the rows from ``first`` on."""
        s = ops.cast(ops.matmul(a_block, c_t), dtype)
        same = ops.equal(ops.expand_dims(labels, 1), contrast_labels)
        index = ops.arange(ops.shape(a_block)[0]) + first
        not_self = ops.not_equal(ops.expand_dims(index + offset, 1), columns)
        valid = index < (n if n is not None else ops.shape(a)[0])
        per_row, counted, g = _block_loss_and_grad(s, same, not_self, valid, mode)
        g = ops.cast(g, product_dtype)
        # dS/da = c / T and dS/dc = a / T: a_scaled already carries the 1/T.
        return (ops.sum(per_row), ops.sum(counted),
                ops.cast(ops.matmul(g, c_product), dtype) * inv_t_tensor,
                ops.cast(ops.matmul(ops.transpose(g), a_block), dtype))

    if blocks == 1:
        return block(a_scaled, anchor_labels, 0)
    padded = blocks * rows - n  # zero rows, masked out by `valid`
    a_padded = ops.pad(a_scaled, [[0, padded], [0, 0]])
    labels_padded = ops.pad(anchor_labels, [[0, padded]])

    def body(i, carry):
        total, count, grad_a, grad_c = carry
        first = i * rows
        t, k, g_a, g_c = block(ops.slice(a_padded, [first, 0], [rows, width]),
                               ops.slice(labels_padded, [first], [rows]), first)
        return (total + t, count + k, ops.slice_update(grad_a, [first, 0], g_a), grad_c + g_c)

    zero = ops.zeros((), dtype)
    init = (zero, zero, ops.zeros((blocks * rows, width), dtype), ops.zeros((m, width), dtype))
    total, count, grad_a, grad_c = _loop(blocks, body, init)
    return total, count, grad_a[:n], grad_c


def similarity_softmax_loss(anchors, anchor_labels, contrast=None, contrast_labels=None, *,
                            temperature, mode, offset=0, count_fn=None, block_rows=None,
                            matmul_dtype=None):
    """Mean per-anchor loss of ``mode`` (see the module docstring).

    Args:
        anchors: ``[n, D]`` L2-normalised embeddings (float32 or float64: the
            dtype of the statistics, the loss and the gradients).
        anchor_labels: ``[n]`` integer labels.
        contrast, contrast_labels: the ``[m, D]`` set the anchors are compared
            with and its labels; ``None`` means the anchors themselves.
        temperature: ``T > 0``.
        mode: one of :data:`MODES`.
        offset: row of anchor 0 within ``contrast`` (the "self" of anchor ``i``
            is contrast row ``offset + i``).
        count_fn: maps the local number of counted anchors to the number the
            mean divides by (across replicas: the sum over replicas, so that
            each replica returns its share of the global mean).
        block_rows: rows of the similarity matrix formed at once; default
            :func:`default_block_rows`. ``n`` is padded to a whole number of blocks.
        matmul_dtype: dtype of the matrix products' operands (e.g. ``"bfloat16"``);
            default that of ``anchors``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    shared = contrast is None
    if shared:
        contrast, contrast_labels = anchors, anchor_labels
    dtype = anchors.dtype
    inv_t = 1.0 / float(temperature)
    m = contrast.shape[0]
    anchor_labels = ops.reshape(anchor_labels, (-1,))
    contrast_labels = ops.reshape(contrast_labels, (1, -1))

    @ops.custom_gradient
    def kernel(a, c):
        total, count, grad_a, grad_c = _summed_loss_and_grads(
            a, c, anchor_labels, contrast_labels, inv_t=inv_t, mode=mode, offset=offset,
            rows=block_rows or default_block_rows(m or 1), product_dtype=matmul_dtype)
        count = ops.stop_gradient(count if count_fn is None else count_fn(count))
        norm = 1.0 / ops.maximum(count, 1.0)

        def grad(upstream):
            factor = ops.cast(upstream, dtype) * norm
            return grad_a * factor, grad_c * factor

        return total * norm, grad

    if shared:
        # One input, used as anchors and contrast: the two gradients add up.
        return kernel(anchors, anchors)
    return kernel(anchors, contrast)


def batch_softmax_loss(z, labels, *, temperature, mode, ids_per=None, block_rows=None,
                       matmul_dtype=None):
    """:func:`similarity_softmax_loss` of a batch ``z [n, D]`` (normalised here)
    against the global batch (:func:`~keras_supcon.losses.replicas.global_batch`:
    the batch itself on one device).

    ``ids_per``: ``labels`` are image ids repeated ``ids_per`` times (SimCLR).
    ``matmul_dtype``: see :func:`similarity_softmax_loss`.
    """
    from keras_supcon.losses.replicas import global_batch
    from keras_supcon.losses.similarity import l2_normalize

    batch = global_batch(l2_normalize(z), labels, ids_per=ids_per)
    return similarity_softmax_loss(batch.rows, batch.labels, batch.all_rows, batch.all_labels,
                                   temperature=temperature, mode=mode, offset=batch.offset,
                                   count_fn=batch.replicas.sum, block_rows=block_rows,
                                   matmul_dtype=matmul_dtype)
