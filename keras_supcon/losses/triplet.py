"""Triplet loss with semi-hard, batch-hard, batch-all and random triplet mining.

Embeddings ``[B, D]`` or ``[B, V, D]`` are flattened into ``N = B * V``
anchors (each carrying its image's label) and L2-normalised. With ``d`` the
Euclidean distance (or its square, ``squared=True``), ``P(a)`` the other
anchors with the label of ``a`` and ``Q(a)`` the anchors with another label,
a triplet ``(a, p, n)``, ``p in P(a)``, ``n in Q(a)``, costs::

    l(a, p, n) = max(d(a, p) - d(a, n) + margin, 0)

- ``mining="semihard"`` (FaceNet, Schroff et al. 2015; the rule of the retired
  ``tfa.losses.triplet_semihard_loss``): every positive pair ``(a, p)`` is an
  anchor-positive; its negative is the nearest one farther than ``p``,
  ``min {d(a, n) : n in Q(a), d(a, n) > d(a, p)}``, or, if there is none, the
  farthest negative ``max_{n in Q(a)} d(a, n)``; the loss is the mean of ``l`` over
  the positive pairs of anchors with ``Q(a)`` non-empty. Hard negatives (closer than
  the positive) are left alone early in training, which is what keeps the
  embedding from collapsing to one point (loss = margin) as batch-hard can at
  small scale. The default.
- ``mining="hard"`` (batch-hard, Hermans et al. 2017): per anchor, the
  farthest positive and the nearest negative,
  ``L_a = max(max_{p in P(a)} d(a, p) - min_{n in Q(a)} d(a, n) + margin, 0)``;
  the loss is the mean of ``L_a`` over anchors with ``P(a)`` and ``Q(a)`` non-empty.
- ``mining="all"`` (batch-all): the mean of ``l(a, p, n)`` over all valid
  triplets with ``l > 0`` (0 if there are none). Builds an ``[N, N, N]`` tensor.
- ``mining="random"``: per anchor one ``p`` and one ``n`` drawn uniformly from
  ``P(a)`` and ``Q(a)`` (see :func:`random_triplets`); mean of ``l`` over the
  anchors with ``P(a)`` and ``Q(a)`` non-empty.

Anchors without a positive or a negative are left out; with none left the
loss is 0 (all labels distinct with one view, or a single class).
"""

import keras
from keras import ops

from keras_supcon.losses.replicas import global_batch
from keras_supcon.losses.similarity import flatten_views, l2_normalize

MINING = ("semihard", "hard", "all", "random")


def check_margin(margin):
    if not float(margin) >= 0:
        raise ValueError(f"margin must be >= 0; got {margin}.")
    return float(margin)


def check_mining(mining):
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}; got {mining!r}.")
    return mining


def pairwise_distances(a, b=None, squared=False):
    """``[n, m]`` Euclidean distances between the rows of ``a`` and of ``b``
    (``b=None``: ``a`` itself), squared if asked.

    The square root is taken of ``1e-16`` where the squared distance is 0 and
    the result zeroed there, so the gradient stays finite (0) at coincident points.
    """
    b = a if b is None else b
    dot = ops.matmul(a, ops.transpose(b))
    sq_a = ops.sum(ops.square(a), axis=1, keepdims=True)
    sq_b = ops.expand_dims(ops.sum(ops.square(b), axis=1), 0)
    d2 = ops.maximum(sq_a - 2.0 * dot + sq_b, 0.0)
    if squared:
        return d2
    zero = ops.cast(ops.equal(d2, 0.0), d2.dtype)
    return ops.sqrt(d2 + zero * 1e-16) * (1.0 - zero)


def triplet_masks(labels, candidate_labels=None, offset=0):
    """Boolean ``[n, m]`` masks ``(positive, negative)`` of anchors ``labels [n]``
    against candidates ``candidate_labels [m]`` (``None``: the anchors themselves),
    anchor ``a`` being candidate ``offset + a``: ``positive[a, p]`` = same label and
    ``p`` not the anchor itself; ``negative[a, n]`` = other label."""
    labels = ops.reshape(labels, (-1,))
    candidate_labels = labels if candidate_labels is None else ops.reshape(candidate_labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(candidate_labels, 0))
    rows = ops.arange(ops.shape(labels)[0]) + offset
    columns = ops.arange(ops.shape(candidate_labels)[0])
    not_self = ops.not_equal(ops.expand_dims(rows, 1), ops.expand_dims(columns, 0))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def _draw(mask, r):
    """Per row, the ``(r mod count)``-th True column of ``mask`` (``n`` if none)."""
    mask = ops.cast(mask, "int32")
    count = ops.sum(mask, axis=1)
    k = r % ops.maximum(count, 1)
    return ops.sum(ops.cast(ops.cumsum(mask, axis=1) <= ops.expand_dims(k, 1), "int32"), axis=1)


def random_triplets(labels, seed=None, *, candidate_labels=None, offset=0):
    """One uniformly drawn positive and negative per anchor.

    Args:
        labels: ``[n]`` anchor labels (repeat image labels per view beforehand).
        seed: an int (the same int gives the same draw), a
            ``keras.random.SeedGenerator`` (a new draw per call) or ``None``.
        candidate_labels: ``[m]`` labels of the rows to draw from (the global
            batch, in which anchor ``a`` is row ``offset + a``); ``None``: the
            anchors themselves. The draw is that of the whole ``[m]`` batch, of
            which these anchors take their rows, so that replicas holding parts of
            a batch draw as one device holding all of it.

    Returns:
        ``(positive, negative, valid)``: ``[n]`` int32 candidate indices with
        ``candidate_labels[positive[a]] == labels[a]``, ``positive[a] != offset + a``
        and ``candidate_labels[negative[a]] != labels[a]`` wherever ``valid[a]``
        (``[n]`` bool: ``a`` has a positive and a negative); elsewhere both
        indices are ``offset + a``.
    """
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    if candidate_labels is None:
        candidate_labels = labels
    n, m = ops.shape(labels)[0], ops.shape(candidate_labels)[0]
    positive, negative = triplet_masks(labels, candidate_labels, offset)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    # Uniform ints mod the candidate count: the bias is below count / 2**30.
    r = keras.random.randint((2, m), 0, 2**30, seed=seed)
    self_index = ops.arange(n, dtype="int32") + offset
    r = ops.take(r, self_index, axis=1)
    pos = ops.where(valid, _draw(positive, r[0]), self_index)
    neg = ops.where(valid, _draw(negative, r[1]), self_index)
    return pos, neg, valid


def triplet_loss(labels, embeddings, *, margin=0.2, mining="semihard", squared=False,
                 seed=None):
    """Triplet loss of a batch.

    Args:
        labels: ``[B]`` class labels.
        embeddings: ``[B, D]`` or ``[B, V, D]`` (views become anchors with the
            label of their image). L2-normalised inside.
        margin: the hinge margin, ``>= 0``.
        mining: ``"semihard"``, ``"hard"``, ``"all"`` or ``"random"`` (see the module
            docstring).
        squared: use squared Euclidean distances.
        seed: for ``mining="random"``: an int, a ``keras.random.SeedGenerator``
            or ``None`` (see :func:`random_triplets`).

    Returns:
        A scalar (0 when no anchor has both a positive and a negative). On
        several ``tf.distribute`` replicas, the anchors are this replica's rows,
        mined against the global batch, and the value is this replica's share
        of the global mean (:mod:`~keras_supcon.losses.replicas`).
    """
    margin = check_margin(margin)
    check_mining(mining)
    z, labels, _ = flatten_views(embeddings, labels)
    batch = global_batch(l2_normalize(z), labels)
    d = pairwise_distances(batch.rows, batch.all_rows, squared)  # [anchors, candidates]
    positive, negative = triplet_masks(batch.labels, batch.all_labels, batch.offset)
    # A fill value larger than any distance of the batch: it never wins a min.
    never = ops.stop_gradient(ops.max(d)) + 1.0

    if mining == "all":
        valid = ops.logical_and(ops.expand_dims(positive, 2), ops.expand_dims(negative, 1))
        hinge = ops.relu(ops.expand_dims(d, 2) - ops.expand_dims(d, 1) + margin)  # [a, p, n]
        hinge = ops.where(valid, hinge, 0.0)
        return batch.mean(ops.sum(hinge), ops.sum(ops.cast(hinge > 0, d.dtype)))

    if mining == "semihard":
        d_ap = ops.expand_dims(d, 2)  # [a, p, 1]
        d_an = ops.expand_dims(d, 1)  # [a, 1, n]
        outside = ops.logical_and(ops.expand_dims(negative, 1), d_an > d_ap)  # [a, p, n]
        nearest_outside = ops.min(ops.where(outside, d_an, never), axis=2)  # [a, p]
        farthest = ops.max(ops.where(negative, d, -1.0), axis=1, keepdims=True)  # [a, 1]
        d_an = ops.where(ops.any(outside, axis=2), nearest_outside, farthest)
        valid = ops.logical_and(positive, ops.any(negative, axis=1, keepdims=True))
        hinge = ops.where(valid, ops.relu(d - d_an + margin), 0.0)
        return batch.mean(ops.sum(hinge), ops.sum(ops.cast(valid, d.dtype)))

    if mining == "hard":
        valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
        # Fill values that can never win (distances are >= 0), so no ties with them.
        d_ap = ops.max(ops.where(positive, d, -1.0), axis=1)
        d_an = ops.min(ops.where(negative, d, never), axis=1)
    else:
        pos, neg, valid = random_triplets(batch.labels, seed, candidate_labels=batch.all_labels,
                                          offset=batch.offset)
        d_ap = ops.take_along_axis(d, ops.expand_dims(pos, 1), axis=1)[:, 0]
        d_an = ops.take_along_axis(d, ops.expand_dims(neg, 1), axis=1)[:, 0]
    hinge = ops.where(valid, ops.relu(d_ap - d_an + margin), 0.0)
    return batch.mean(ops.sum(hinge), ops.sum(ops.cast(valid, d.dtype)))


@keras.saving.register_keras_serializable(package="keras_supcon")
class TripletLoss(keras.losses.Loss):
    """:func:`triplet_loss` as a Keras loss: ``y_true`` the ``[B]`` labels,
    ``y_pred`` the ``[B, D]`` or ``[B, V, D]`` embeddings.

    For ``mining="random"`` the loss holds a ``keras.random.SeedGenerator``
    seeded with ``seed`` (an int or ``None``), so every call draws new triplets.
    """

    def __init__(self, margin=0.2, mining="semihard", squared=False, seed=None,
                 name="triplet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = check_margin(margin)
        self.mining = check_mining(mining)
        self.squared = bool(squared)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if mining == "random" else None

    def call(self, y_true, y_pred):
        return triplet_loss(y_true, y_pred, margin=self.margin, mining=self.mining,
                            squared=self.squared, seed=self.seed_generator)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, mining=self.mining, squared=self.squared,
                      seed=self.seed)
        return config
