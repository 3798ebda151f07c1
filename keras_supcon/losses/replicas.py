"""The global batch of a data-parallel step: one mechanism for every loss.

Under ``tf.distribute`` (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``)
each replica runs the loss on its own slice of the batch, while a contrastive,
metric or batch-statistics loss is defined on the **whole** batch. Every loss
of this package reaches the other replicas' rows only through this module, as
pytorch-metric-learning's ``DistributedLossWrapper`` and SimCLR's
``tpu_cross_replica_concat`` do:

- :func:`global_batch`: this replica's rows are the anchors; the candidates
  (positives, negatives, contrast set) are the rows of every replica, with
  this replica's rows at ``offset``. The gather is differentiable: the gradient
  with respect to another replica's rows flows back to that replica.
- :meth:`Replicas.sum`: a differentiable all-reduce of a statistic (Barlow
  Twins' column sums and cross-correlation) or a count.
- :meth:`GlobalBatch.mean`: a loss that is a mean over anchors returns this
  replica's **share** of the global mean, ``sum over its anchors / global
  count``. Keras sums the replicas' gradients and leaves a scalar loss
  unscaled (``keras.losses.Loss`` divides only per-sample losses by the number
  of replicas), so the shares add up to the one-device loss and gradient. A
  loss that is not a mean over anchors (Barlow Twins) computes the same global
  value on every replica and returns ``value / replicas``.

With ``keras.distribution.DataParallel`` on the JAX backend (one or several
processes) nothing is needed: the step is one program over the global
(sharded) batch, so the loss already sees every row and XLA inserts the
collectives. There, as on one device, :func:`current_replicas` has ``count``
1 and every operation here is the identity.
"""

from typing import Any, NamedTuple

import keras
from keras import ops


def replica_context():
    """The ``tf.distribute`` replica context of a multi-replica step, else ``None``."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync < 2:
        return None
    return ctx


class Replicas:
    """The replicas of the current step, as a loss sees them (``count`` 1 on one
    device and under JAX ``DataParallel``, where every method is the identity)."""

    def __init__(self, ctx=None):
        self._ctx = ctx
        self.count = 1 if ctx is None else ctx.num_replicas_in_sync

    def sum(self, x):
        """``x`` summed over replicas (differentiable: the gradient is summed back)."""
        if self._ctx is None:
            return x
        import tensorflow as tf

        return self._ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

    def first_row(self, rows):
        """Row of this replica's first row in the global batch (replica-major order;
        every replica holds ``rows`` rows, as the even split of the global batch gives)."""
        if self._ctx is None:
            return 0
        return ops.cast(self._ctx.replica_id_in_sync_group, "int32") * rows

    def gather(self, x):
        """``x [n, K]`` of every replica, concatenated in replica order: ``[R * n, K]``.

        As in SimCLR's ``tpu_cross_replica_concat``, each replica places its rows
        in its own slot of a zero ``[R, n, K]`` tensor and one all-reduce (sum)
        assembles the global batch; all-reduces run in the same order on every
        replica, and the gradient of a sum is a sum.
        """
        if self._ctx is None:
            return x
        slot = ops.one_hot(self._ctx.replica_id_in_sync_group, self.count, dtype=x.dtype)
        everything = self.sum(ops.reshape(slot, (-1, 1, 1)) * ops.expand_dims(x, 0))
        return ops.reshape(everything, (-1, x.shape[-1]))


def current_replicas():
    """The :class:`Replicas` of the step being traced."""
    return Replicas(replica_context())


class GlobalBatch(NamedTuple):
    """This replica's ``rows`` / ``labels`` (the anchors) and the global batch
    ``all_rows`` / ``all_labels`` they belong to; ``rows[i]`` is ``all_rows[offset + i]``.
    On one device ``all_rows`` is ``rows`` itself and ``offset`` is 0."""

    rows: Any
    labels: Any
    all_rows: Any
    all_labels: Any
    offset: Any
    replicas: Replicas

    def mean(self, local_sum, local_count):
        """This replica's share of the global mean: ``local_sum / global count``
        (``local_sum`` when no anchor counts anywhere)."""
        count = ops.stop_gradient(self.replicas.sum(ops.cast(local_count, local_sum.dtype)))
        return local_sum / ops.maximum(count, 1.0)


def global_batch(rows, labels=None, *, ids_per=None):
    """This replica's ``rows [n, K]`` and ``labels [n]`` with those of every replica.

    ``ids_per``: the labels are per-replica image ids (SimCLR: ``arange(n //
    ids_per)`` repeated ``ids_per`` times); they are shifted by this replica's
    first image, here and only here, so that ids are unique in the global batch
    (``labels`` of the result are the shifted ones).
    """
    replicas = current_replicas()
    offset = replicas.first_row(ops.shape(rows)[0])
    if labels is not None and ids_per is not None and replicas.count > 1:
        labels = labels + ops.cast(offset // ids_per, labels.dtype)
    if replicas.count == 1:
        return GlobalBatch(rows, labels, rows, labels, offset, replicas)
    if labels is None:
        return GlobalBatch(rows, None, replicas.gather(rows), None, offset, replicas)
    # Labels travel as one more float column next to the rows: class ids and
    # image ids are far below 2**24, so float32 holds them exactly.
    column = ops.cast(ops.reshape(labels, (-1, 1)), rows.dtype)
    everything = replicas.gather(ops.concatenate([rows, column], axis=1))
    all_labels = ops.cast(ops.round(everything[:, -1]), labels.dtype)
    return GlobalBatch(rows, labels, everything[:, :-1], all_labels, offset, replicas)
