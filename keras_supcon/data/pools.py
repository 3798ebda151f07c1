"""Pools of a data set for semi-supervised training (pseudo-labelling): a labelled
subset, the unlabelled pool (the data set's own unlabelled split, or training images
with their labels held out), subsets of the pool, and pseudo-labelled additions."""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_supcon.data.sources import load_unlabelled_split, split_indices
from keras_supcon.errors import DataError


class Pools(NamedTuple):
    """What :func:`split_pools` returns."""

    labelled: object  # dataset of the labelled (image, label) pairs
    n_labelled: int
    pool: object  # dataset the unlabelled images are drawn from
    pool_index: object  # (shuffled positions, true labels) of a holdout pool; None: a split
    known: bool  # whether the pool's true labels are known (to score pseudo-labels)


def _labels_of(ds):
    return np.concatenate([y.numpy().reshape(-1) for y in ds.map(lambda x, y: y).batch(4096)])


def _select(ds, mask):
    """The elements of ``ds`` whose position is True in ``mask`` (order kept), with their
    number as the dataset's cardinality: a filtered dataset's is unknown, and Keras warns
    "Your input ran out of data; interrupting training" at the end of the first pass of
    ``fit`` / ``predict`` over one."""
    count = int(np.sum(mask))
    mask = tf.constant(mask, tf.bool)

    def selected(i, _):
        return mask[i]

    def element(_, ex):
        return ex

    selection = ds.enumerate().filter(selected).map(element)
    return selection.apply(tf.data.experimental.assert_cardinality(count))


def split_pools(data, spec, *, labelled, max_ratio, source="auto", data_dir=None, seed=0):
    """The :class:`Pools` of ``data``: ``labelled`` images (chosen per class; all
    when None and the data set has an unlabelled split) and the unlabelled pool.

    ``source``: ``split`` (the data set's unlabelled split), ``holdout`` (part of
    the training split, labels hidden), ``auto`` (the split if there is one).
    """
    split = None if source == "holdout" else load_unlabelled_split(spec, data_dir=data_dir)
    if split is not None:
        train = data.train
        n_train = data.sizes["train"]
        if labelled is not None and labelled < n_train:
            train = _select(train, _labelled_mask(_labels_of(train), labelled, seed))
            n_train = labelled
        return Pools(train, n_train, split, None, False)
    if source == "split":
        raise DataError(f"{data.name} has no unlabelled split; use --unlabelled holdout to "
                        "hold out part of the training images as unlabelled")
    labels = _labels_of(data.train)
    n = len(labels)
    if labelled is None:  # as many as the largest ratio leaves room for
        labelled = int(n // (1 + max_ratio))
    needed = int(round(max_ratio * labelled))
    if labelled < data.num_classes or labelled + needed > n:
        raise DataError(
            f"cannot hold out unlabelled images: {data.name} has {n} training images, "
            f"and {labelled} labelled + {needed} unlabelled (ratio 1:{max_ratio:g}) "
            f"are needed, with at least one labelled image per class "
            f"({data.num_classes}); lower --labelled or the largest ratio")
    mask = _labelled_mask(labels, labelled, seed)
    pool_idx = np.flatnonzero(~mask)
    np.random.default_rng(seed).shuffle(pool_idx)  # pool[:k] is a random k-subset
    return Pools(_select(data.train, mask), labelled, data.train, (pool_idx, labels), True)


def _labelled_mask(labels, count, seed):
    """``count`` positions, stratified by class where possible."""
    mask = np.zeros(len(labels), bool)
    if count >= len(labels):
        mask[:] = True
        return mask
    chosen, _ = split_indices(labels, len(labels) - count, seed)
    mask[chosen] = True
    return mask


def unlabelled_subset(pool_ds, pool, count):
    """``(ds of (image, true label or -1), size)``: the first ``count`` of the pool."""
    if pool is None:  # an unlabelled split
        ds = pool_ds.take(count)
        n = int(ds.cardinality())
        if n < 0:  # counted once, then carried (see _select)
            n = int(ds.reduce(0, lambda c, _: c + 1))
            ds = ds.apply(tf.data.experimental.assert_cardinality(n))
        return ds, n
    pool_idx, labels = pool
    mask = np.zeros(len(labels), bool)
    mask[pool_idx[:count]] = True
    return _select(pool_ds, mask), int(mask.sum())


def with_pseudo_labels(ds, keep, predicted):
    keep = tf.constant(keep, tf.bool)
    predicted = tf.constant(predicted, tf.int64)

    def kept(i, _):
        return keep[i]

    def relabelled(i, ex):
        return ex[0], predicted[i]

    return ds.enumerate().filter(kept).map(relabelled)
