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

- **The positives from per-class sums.** In SupCon (out) and npairs the targets'
  part of ``L_i``, ``-sum_j Y_ij S_ij`` with ``Y_ij = P_ij / |P_i|``, is linear in
  ``S``: it is ``-a_i . C_i / (T |P_i|)`` with ``C_i`` the sum of the contrast rows of
  anchor ``i``'s class (less its own row for SupCon). Per-class sums of the rows
  (labels made class ids by sorting; ``segment_sum``) give it and both of its
  gradients in ``O((n + m) D)``, so no ``[n, m]`` label matrix is ever formed for
  them. Only SupCon (in), whose positives sit inside a logarithm, forms the block's
  positives.
- **Row blocks in a loop.** The softmax part, ``lse_i`` and its gradient
  ``softmax_ij``, exists one block of ``block_rows`` rows at a time, inside a
  compiled loop (``lax.fori_loop``; a ``tf.while_loop`` with two iterations in
  flight), so one or two blocks are alive. A block holds whole rows, so each row's
  log-sum-exp is complete within it and nothing is recomputed. Memory: the inputs,
  their gradients and one block, ``O(N * D + block_rows * m)``: with a fixed number
  of rows per block, a flat number of bytes per row of the batch whatever ``N``.
- **The gradient in the same pass, few passes over a block.** The block's softmax
  gives ``dL/dS`` at once, so a forward + backward costs the three matrix products of
  ``S = a c^T`` and of its gradient (``G c`` and ``G^T a``), as the bare
  ``sum(a @ a.T)`` does, plus elementwise work, which TensorFlow's graph mode runs
  one pass over the block per operation: the row's own column masked (a scatter of
  one element per row), ``exp``, the row sums. ``G = f * H`` with one factor per row,
  applied to the ``[r, D]`` side of the products; rows are shifted by their maximum
  before ``exp`` only at temperatures where ``exp`` could overflow
  (:data:`UNSHIFTED_MAX_INV_T`). Inf-CL (Wang et al. 2024) saves only per-row
  statistics and recomputes each tile in the backward pass (a fourth product) to
  keep memory flat with tiles narrower than a row; here the blocks hold whole rows
  and the saved state is the gradient itself (``2 N D`` numbers), so the memory is
  as flat without the fourth product. When only the value is needed (evaluation),
  graph and XLA compilers drop the gradient work.
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
# Rows are unit vectors, so |S_ij| <= 1/T. Up to this 1/T, exp(S) can neither overflow
# nor reach float32's subnormals (e^40 = 2.4e17, and summed over 2^31 columns 5e26;
# e^-40 = 4e-18), so the log-sum-exp needs no shift by each row's maximum: two passes
# over each block fewer (the maximum and the subtraction). At lower temperatures
# (T < 0.025) the rows are shifted by their maximum.
UNSHIFTED_MAX_INV_T = 40.0


def default_block_rows(num_contrast):
    """Rows per block for a contrast set of ``num_contrast``: ``BLOCK_ELEMENTS /
    num_contrast``, at least :data:`MIN_BLOCK_ROWS`."""
    return max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(int(num_contrast), 1))


def _self_masker(first, offset, num_contrast, rows):
    """``mask(x, value)``: ``x [rows, m]`` (the block of anchors ``first ...``) with each
    row's own column (``offset + first + i``) set to ``value`` by a scatter of ``rows``
    elements. A padding row whose own column would lie past the contrast set gets the
    last column instead; padding rows are not counted."""
    index = ops.arange(rows)
    own = ops.stack([index, ops.minimum(index + (offset + first), num_contrast - 1)], axis=1)

    def mask(x, value):
        return ops.scatter_update(x, own, ops.full((rows,), value, dtype=x.dtype))

    return mask


def _block_loss_and_grad(s, mode, counted, safe_num, *, targets, mask_self, shifted):
    """Per-row loss ``[r]`` (zero on rows not ``counted``), ``H [r, m]`` and ``f [r, 1]``
    with ``dL_i/dS = f * H`` of one block, for the softmax part of the loss: the
    log-sum-exp of SupCon (out) and npairs (their positives' part is linear in ``S``:
    :func:`_linear_targets`), all of SupCon (in).

    Each ``[r, m]`` operation is a pass over the block (graph mode fuses none), so the
    row factor ``f`` is left out of ``H`` (it is applied to the ``[r, D]`` side of the
    products) and rows are shifted by their maximum only when ``shifted``
    (:data:`UNSHIFTED_MAX_INV_T`). ``targets()`` gives the block's ``same`` matrix."""
    dtype = s.dtype
    counted = ops.expand_dims(counted, 1)
    if mode != "npairs":
        # A row's own column leaves its softmax: set to a large negative number, not
        # multiplied by zero after exp(), since exp(1/T - max) overflows at low
        # temperatures and inf * 0 is NaN.
        s = mask_self(s, -1e9)
    if shifted:
        row_max = ops.max(s, axis=1, keepdims=True)
        e = ops.exp(s - row_max)
    else:
        row_max = 0.0
        e = ops.exp(s)
    denominator = ops.sum(e, axis=1, keepdims=True)
    if mode == "supcon_in":
        pos_e = mask_self(ops.cast(targets(), dtype), 0.0) * e
        # Rows that are not counted get sum 1 (log 0 avoided); exp(-row_max) cancels
        # between the two logs.
        pos_sum = ops.sum(pos_e, axis=1, keepdims=True) + (1.0 - counted)
        per_row = ops.log(denominator) - ops.log(pos_sum / ops.expand_dims(safe_num, 1))
        h = e - pos_e * (denominator / pos_sum)
    else:
        per_row = ops.log(denominator) + row_max
        h = e
    return ops.squeeze(per_row * counted, 1), h, counted / denominator


def _counted_anchors(contrast_ids, anchor_ids, mode, dtype):
    """``(counted [n], |P| [n] at least 1)``: which anchors count (npairs: all; SupCon:
    those with a positive, another row of their class) and their number of targets
    ``|P_i|`` (their class's contrast rows, less their own for SupCon)."""
    class_count = ops.segment_sum(ops.ones_like(contrast_ids, dtype=dtype), contrast_ids,
                                  num_segments=ops.shape(contrast_ids)[0])
    num = ops.take(class_count, anchor_ids, axis=0)
    if mode == "npairs":
        return ops.ones_like(num), num
    num = num - 1.0
    return ops.cast(num > 0, dtype), ops.maximum(num, 1.0)


def _linear_targets(a_t, c, anchor_ids, contrast_ids, own, mode, weight):
    """The positives' part of SupCon (out) and npairs, from per-class sums of rows.

    With targets ``P_ij`` (``same_ij``, without ``j = own_i`` for SupCon) and
    ``Y_ij = P_ij / |P_i|``, that part of ``L_i`` is ``-sum_j Y_ij S_ij =
    -a_i . (sum_j P_ij c_j) / (T |P_i|)``: linear in ``S``, so its value and gradients
    need only ``sum_j P_ij c_j``, the sum of the contrast rows of anchor ``i``'s class
    (less its own row), not an ``[n, m]`` matrix. ``a_t`` is ``a / T``; ``weight [n, 1]``
    is ``counted_i / |P_i|``.

    Returns ``(sum_i counted_i Y_i . S_i, d/da_t, d/dc)`` of that sum."""
    num_contrast = ops.shape(c)[0]
    class_rows = ops.segment_sum(c, contrast_ids, num_segments=num_contrast)
    target_rows = ops.take(class_rows, anchor_ids, axis=0)
    if mode != "npairs":
        target_rows = target_rows - ops.take(c, own, axis=0)
    total = ops.sum(weight * a_t * target_rows)
    weighted = weight * a_t
    # d/dc_j = sum_i weight_i P_ij a_t,i: the weighted anchors of c_j's class, less
    # c_j's own anchor (SupCon)
    grad_c = ops.take(ops.segment_sum(weighted, anchor_ids, num_segments=num_contrast),
                      contrast_ids, axis=0)
    if mode != "npairs":
        grad_c = grad_c - ops.scatter(ops.expand_dims(own, 1), weighted, ops.shape(c))
    return total, weight * target_rows, grad_c


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


def _class_ids(contrast_labels):
    """The contrast labels as class ids in ``[0, m)`` (equal labels, equal ids; any
    integers in): each label's rank among the distinct labels, by one sort (no ``[n, m]``
    comparison, which XLA's ``searchsorted`` would form)."""
    order = ops.argsort(contrast_labels)
    ordered = ops.take(contrast_labels, order)
    is_new = ops.concatenate([ops.ones((1,), "int32"),
                              ops.cast(ops.not_equal(ordered[1:], ordered[:-1]), "int32")])
    rank = ops.cumsum(is_new) - 1
    return ops.scatter(ops.expand_dims(order, 1), rank, ops.shape(contrast_labels))


def _over_blocks(block, rows, a_scaled, anchor_ids, counted, safe_num, contrast_shape):
    """``block(a, ids, first, counted, safe_num)``'s loss sum and gradients summed over the
    anchors, ``rows`` at a time: one block when ``a_scaled`` has at most ``rows`` rows or
    its number of rows is not static (a TensorFlow graph traced with an unknown batch
    dimension), else a loop over blocks of the anchors padded with zero rows, not
    counted."""
    n, width = a_scaled.shape
    if n is None or n <= rows:
        return block(a_scaled, anchor_ids, 0, counted, safe_num)
    blocks = math.ceil(n / rows)
    padded = blocks * rows - n

    def pad(x, value=0):
        return ops.pad(x, [[0, padded]] + [[0, 0]] * (len(x.shape) - 1), constant_values=value)

    a_padded, ids_padded, counted_padded, safe_padded = (
        pad(a_scaled), pad(anchor_ids), pad(counted), pad(safe_num, 1))

    def body(i, carry):
        total, grad_a, grad_c = carry
        first = i * rows
        ids, counted_block, safe_block = (ops.slice(x, [first], [rows]) for x in (
            ids_padded, counted_padded, safe_padded))
        t, g_a, g_c = block(ops.slice(a_padded, [first, 0], [rows, width]), ids, first,
                            counted_block, safe_block)
        return (total + t, ops.slice_update(grad_a, [first, 0], g_a), grad_c + g_c)

    dtype = counted.dtype
    init = (ops.zeros((), dtype), ops.zeros((blocks * rows, width), dtype),
            ops.zeros(contrast_shape, dtype))
    total, grad_a, grad_c = _loop(blocks, body, init)
    return total, grad_a[:n], grad_c


def _summed_loss_and_grads(a, c, contrast_labels, *, inv_t, mode, offset,
                           rows, product_dtype):
    """``(sum of L_i, number of counted anchors, dSum/da, dSum/dc)`` of anchors ``a``
    against ``c``, the softmax part ``rows`` anchors at a time (:func:`_over_blocks`)."""
    dtype = a.dtype
    product_dtype = product_dtype or dtype
    num_contrast = ops.shape(c)[0]
    # convert_to_tensor(dtype=...), not cast(): cast() would round 1/T to float32 first.
    inv_t_tensor = ops.convert_to_tensor(inv_t, dtype=dtype)
    a_t = a * inv_t_tensor
    a_scaled = ops.cast(a_t, product_dtype)
    c_product = ops.cast(c, product_dtype)
    c_t = ops.transpose(c_product)  # once, outside the loop
    own = ops.arange(ops.shape(a)[0]) + offset  # each anchor's own row of c
    contrast_ids = _class_ids(contrast_labels)
    anchor_ids = ops.take(contrast_ids, own)  # anchor i is contrast row own[i]
    counted, safe_num = _counted_anchors(contrast_ids, anchor_ids, mode, dtype)
    shifted = inv_t > UNSHIFTED_MAX_INV_T

    def block(a_block, ids, first, counted_block, safe_block):
        """The softmax part's loss sum and gradients for the rows from ``first`` on."""
        rows_here = ops.shape(a_block)[0]
        s = ops.cast(ops.matmul(a_block, c_t), dtype)
        per_row, h, f = _block_loss_and_grad(
            s, mode, counted_block, safe_block, shifted=shifted,
            targets=lambda: ops.equal(ops.expand_dims(ids, 1), ops.expand_dims(contrast_ids, 0)),
            mask_self=_self_masker(first, offset, num_contrast, rows_here))
        # dL/dS = f * H with one factor f per row, applied to the [r, D] side of the
        # products (G c = f * (H c), G^T a = H^T (f * a)) rather than to the [r, m] block;
        # low-precision operands take f * H, which stays in their range.
        if product_dtype == dtype:
            g, row_factor, a_rows = h, f, a_block * f
        else:
            g, row_factor, a_rows = ops.cast(h * f, product_dtype), 1.0, a_block
        # dS/da = c / T and dS/dc = a / T: a_scaled already carries the 1/T.
        return (ops.sum(per_row),
                ops.cast(ops.matmul(g, c_product), dtype) * (row_factor * inv_t_tensor),
                ops.cast(ops.matmul(ops.transpose(g), a_rows), dtype))

    total, grad_a, grad_c = _over_blocks(block, rows, a_scaled, anchor_ids, counted, safe_num,
                                         ops.shape(c))
    if mode != "supcon_in":  # the positives' part, linear in S
        target_total, target_grad_a, target_grad_c = _linear_targets(
            a_t, c, anchor_ids, contrast_ids, own, mode, ops.expand_dims(counted / safe_num, 1))
        total = total - target_total
        grad_a = grad_a - target_grad_a * inv_t_tensor
        grad_c = grad_c - target_grad_c
    return total, ops.sum(counted), grad_a, grad_c


def similarity_softmax_loss(anchors, anchor_labels, contrast=None, contrast_labels=None, *,
                            temperature, mode, offset=0, count_fn=None, block_rows=None,
                            matmul_dtype=None):
    """Mean per-anchor loss of ``mode`` (see the module docstring).

    Args:
        anchors: ``[n, D]`` L2-normalised embeddings (float32 or float64: the
            dtype of the statistics, the loss and the gradients).
        anchor_labels: ``[n]`` integer labels (with ``contrast``, those of its rows
            ``offset ... offset + n - 1``, which the anchors are).
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
    contrast_labels = ops.reshape(contrast_labels, (-1,))

    @ops.custom_gradient
    def kernel(a, c):
        total, count, grad_a, grad_c = _summed_loss_and_grads(
            a, c, contrast_labels, inv_t=inv_t, mode=mode, offset=offset,
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
