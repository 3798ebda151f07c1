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
a positive; npairs: all). Why a kernel rather than plain ``keras.ops`` autodiff:

- the ``[n, m]`` matrices exist one block of rows at a time (``block_rows``
  rows, a few MB that stay in cache), so memory is ``O(block * m)`` instead
  of a handful of ``n x m`` float32 buffers;
- the gradient is formed in the same pass as the loss (the block's softmax is
  still in cache), so a forward + backward costs the three matrix products
  of ``S = a c^T`` and its gradient (``G c`` and ``G^T a``), as the bare
  ``sum(a @ a.T)`` does, plus cache-resident elementwise work. When only the
  value is needed (evaluation), graph and XLA compilers drop the gradient ops.
"""

from keras import ops

MODES = ("supcon_out", "supcon_in", "npairs")

# Elements of one block of the similarity matrix (4 MiB of float32), a block
# small enough to stay in a CPU core's cache while the loss and its gradient are formed.
BLOCK_ELEMENTS = 1 << 20
# Fewest rows per block. XLA's CPU code for matrix products of few rows is far
# slower than for larger ones: at N = 16384 (B = 8192) SupCon under XLA took
# 7.0x the similarity-product floor with 64-row blocks, 2.18x with 128, 1.90x
# with 256, 1.92x with 512 and 1.86x with 1024, while graph mode stayed at
# 1.65x-1.80x (docs/performance.md, "XLA at B = 8192").
MIN_BLOCK_ROWS = 512


def default_block_rows(num_contrast):
    """Rows per block for a contrast set of ``num_contrast``: ``BLOCK_ELEMENTS /
    num_contrast``, at least :data:`MIN_BLOCK_ROWS`."""
    return max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(int(num_contrast), 1))


def _row_blocks(n, block_rows):
    """``[(start, stop), ...]`` covering ``range(n)``; one block if ``n`` is not static."""
    if n is None:
        return [(None, None)]
    return [(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]


def _block_loss_and_grad(s, same, not_self, mode):
    """Per-row loss ``[r]``, counted-row weights ``[r]`` and ``dL_i/dS`` ``[r, m]`` of one block."""
    dtype = s.dtype
    if mode == "npairs":
        row_max = ops.max(s, axis=1, keepdims=True)
        e = ops.exp(s - row_max)
        targets = ops.cast(same, dtype)
        num_same = ops.sum(targets, axis=1, keepdims=True)
        targets = targets / num_same
        denominator = ops.sum(e, axis=1, keepdims=True)
        lse = ops.log(denominator) + row_max
        per_row = ops.squeeze(lse, 1) - ops.sum(targets * s, axis=1)
        grad = e / denominator - targets
        return per_row, ops.ones_like(per_row), grad

    positive = ops.logical_and(same, not_self)
    pos = ops.cast(positive, dtype)
    num_pos = ops.sum(pos, axis=1, keepdims=True)
    # The self term is left out of the softmax with where(), not by multiplying
    # exp() by zero: exp(1/T - max) overflows at low temperatures and inf * 0 is NaN.
    others = ops.where(not_self, s, ops.convert_to_tensor(-1e9, dtype=dtype))
    row_max = ops.max(others, axis=1, keepdims=True)
    e = ops.exp(others - row_max)
    denominator = ops.sum(e, axis=1, keepdims=True)
    softmax = e / denominator
    safe_num_pos = ops.maximum(num_pos, 1.0)
    has_pos = ops.cast(num_pos > 0, dtype)
    if mode == "supcon_out":
        per_row = (ops.log(denominator) + row_max
                   - ops.sum(pos * s, axis=1, keepdims=True) / safe_num_pos)
        grad = softmax - pos / safe_num_pos
    else:
        pos_e = pos * e
        # Rows without positives get sum 1 (log 0 avoided); they are not counted.
        # exp(-row_max) cancels between the two logs.
        pos_sum = ops.sum(pos_e, axis=1, keepdims=True) + (1.0 - has_pos)
        per_row = ops.log(denominator) - ops.log(pos_sum / safe_num_pos)
        grad = softmax - pos_e / pos_sum
    has_pos = ops.squeeze(has_pos, 1)
    return ops.squeeze(per_row, 1) * has_pos, has_pos, grad * ops.expand_dims(has_pos, 1)


def similarity_softmax_loss(anchors, anchor_labels, contrast=None, contrast_labels=None, *,
                            temperature, mode, offset=0, count_fn=None, block_rows=None):
    """Mean per-anchor loss of ``mode`` (see the module docstring).

    Args:
        anchors: ``[n, D]`` L2-normalised embeddings (float32 or float64).
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
            :func:`default_block_rows`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    shared = contrast is None
    if shared:
        contrast, contrast_labels = anchors, anchor_labels
    dtype = anchors.dtype
    inv_t = 1.0 / float(temperature)
    n, m = anchors.shape[0], contrast.shape[0]
    block_rows = block_rows or default_block_rows(m or 1)
    anchor_labels = ops.reshape(anchor_labels, (-1, 1))
    contrast_labels = ops.reshape(contrast_labels, (1, -1))

    @ops.custom_gradient
    def kernel(a, c):
        # convert_to_tensor(dtype=...), not cast(): cast() would round 1/T to float32 first.
        inv_t_tensor = ops.convert_to_tensor(inv_t, dtype=dtype)
        a_scaled = a * inv_t_tensor
        columns = ops.expand_dims(ops.arange(ops.shape(c)[0]), 0)
        c_t = ops.transpose(c)  # once: a transpose per block would all run at the start
        total = ops.zeros((), dtype)
        count = ops.zeros((), dtype)
        grad_a, grad_c = [], None
        for start, stop in _row_blocks(n, block_rows):
            a_block = a_scaled[start:stop]
            s = ops.matmul(a_block, c_t)
            same = ops.equal(anchor_labels[start:stop], contrast_labels)
            rows = ops.arange(ops.shape(a_block)[0]) + (offset + (start or 0))
            not_self = ops.not_equal(ops.expand_dims(rows, 1), columns)
            per_row, counted, g = _block_loss_and_grad(s, same, not_self, mode)
            total = total + ops.sum(per_row)
            count = count + ops.sum(counted)
            # dS/da = c / T and dS/dc = a / T: a_scaled already carries the 1/T.
            grad_a.append(ops.matmul(g, c) * inv_t_tensor)
            g_c = ops.matmul(ops.transpose(g), a_block)
            grad_c = g_c if grad_c is None else grad_c + g_c
        count = ops.stop_gradient(count if count_fn is None else count_fn(count))
        norm = 1.0 / ops.maximum(count, 1.0)
        grad_a = ops.concatenate(grad_a, axis=0) if len(grad_a) > 1 else grad_a[0]

        def grad(upstream):
            factor = ops.cast(upstream, dtype) * norm
            return grad_a * factor, grad_c * factor

        return total * norm, grad

    if shared:
        # One input, used as anchors and contrast: the two gradients add up.
        return kernel(anchors, anchors)
    return kernel(anchors, contrast)


def batch_softmax_loss(z, labels, *, temperature, mode, ids_per=None, block_rows=None):
    """:func:`similarity_softmax_loss` of a batch ``z [n, D]`` (normalised here)
    against the global batch (:func:`~keras_supcon.losses.replicas.global_batch`:
    the batch itself on one device).

    ``ids_per``: ``labels`` are image ids repeated ``ids_per`` times (SimCLR).
    """
    from keras_supcon.losses.replicas import global_batch
    from keras_supcon.losses.similarity import l2_normalize

    batch = global_batch(l2_normalize(z), labels, ids_per=ids_per)
    return similarity_softmax_loss(batch.rows, batch.labels, batch.all_rows, batch.all_labels,
                                   temperature=temperature, mode=mode, offset=batch.offset,
                                   count_fn=batch.replicas.sum, block_rows=block_rows)
