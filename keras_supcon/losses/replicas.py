"""The global batch of a data-parallel step, for losses that need the whole batch.

Under ``tf.distribute`` (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``)
each replica runs the loss on its own slice of the batch. A contrastive loss
must compare every anchor with the **global** batch, as SimCLR's
``tpu_cross_replica_concat`` does: :func:`global_batch` gathers the embeddings
and labels of all replicas (``all_gather`` is differentiable: the gradient with
respect to another replica's embeddings flows back to that replica) and says
where this replica's rows sit in it.

With ``keras.distribution.DataParallel`` on the JAX backend nothing is needed:
the step is one program over the global (sharded) batch, so the loss already
sees every replica's rows and XLA inserts the collectives.
"""

from typing import Any, Callable, NamedTuple

import keras


class GlobalBatch(NamedTuple):
    """``contrast`` / ``labels``: the global batch; this replica's row 0 is row ``offset``.

    ``count_fn`` sums a per-replica count over replicas.

    A loss built on it returns this replica's share of the global mean
    (``sum over its anchors / global count``): Keras sums the replicas'
    gradients, and leaves a scalar loss unscaled (``keras.losses.Loss`` divides
    only per-sample losses by the number of replicas).
    """

    contrast: Any
    labels: Any
    offset: Any
    count_fn: Callable


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


def global_batch(z, labels, *, ids_per=None):
    """Gather ``z [n, D]`` and ``labels [n]`` over replicas; ``None`` on one replica.

    Every replica must hold the same number of rows (the global batch splits
    evenly). As in SimCLR's ``tpu_cross_replica_concat``, each replica places
    its rows in its own slot of a zero ``[R, n, D + 1]`` tensor and one
    all-reduce (sum) assembles the global batch; all-reduces run in the same
    order on every replica, and the gradient of a sum is a sum.

    ``ids_per``: the labels are per-replica image ids (SimCLR) repeated
    ``ids_per`` times; they are shifted by this replica's first image so that
    ids stay unique in the global batch.
    """
    ctx = replica_context()
    if ctx is None:
        return None
    import tensorflow as tf

    replicas = ctx.num_replicas_in_sync
    replica = ctx.replica_id_in_sync_group
    n = tf.shape(z)[0]
    offset = tf.cast(replica, tf.int32) * n
    if ids_per is not None:
        labels = labels + tf.cast(offset // ids_per, labels.dtype)
    # Labels travel as floats next to the embeddings: class ids and image ids
    # are far below 2**24, so float32 holds them exactly.
    rows = tf.concat([z, tf.cast(tf.reshape(labels, (-1, 1)), z.dtype)], axis=1)
    slot = tf.reshape(tf.one_hot(replica, replicas, dtype=z.dtype), (-1, 1, 1))
    everything = ctx.all_reduce(tf.distribute.ReduceOp.SUM, slot * rows[None])
    everything = tf.reshape(everything, (-1, rows.shape[-1]))
    return GlobalBatch(
        contrast=everything[:, :-1],
        labels=tf.cast(tf.round(everything[:, -1]), labels.dtype),
        offset=offset,
        count_fn=lambda count: ctx.all_reduce(tf.distribute.ReduceOp.SUM, count),
    )
