"""``tf.data`` input pipelines for the training stages.

Each split of :class:`~keras_supcon.data.sources.DataSplits` yields
``(uint8 image [H, W, C], label)``. The pipelines here resize (in parallel),
optionally cache, shuffle, batch, augment whole batches (in parallel) and prefetch:

- :func:`contrastive_batches`: ``(views [B, V, S, S, 3], labels [B])`` for the
  contrastive losses, full batches only (a contrastive loss needs the batch);
- :func:`supervised_batches`: ``(images [B, S, S, 3], labels [B])`` for the
  classifier stages, optionally with crop-and-flip augmentation;
- :func:`joint_targets`: views and labels -> the targets of a joint CE + SupCon model.

Images stay raw RGB in [0, 255]: preprocessing lives inside the models.
"""

import numpy as np
import tensorflow as tf

from keras_supcon.data.augment import CONTRASTIVE_POLICY, WEAK_POLICY, augment_batch, make_views
from keras_supcon.errors import ConfigError

AUTOTUNE = tf.data.AUTOTUNE


def resize_images(ds, image_size, num_parallel_calls=AUTOTUNE):
    """uint8 ``[H, W, C]`` -> float32 ``[S, S, 3]`` in [0, 255] (bilinear; gray -> RGB)."""

    def resize(image, label):
        image = tf.cast(image, tf.float32)
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.repeat(image, 3, axis=-1),
                        lambda: image)
        image = tf.image.resize(image, [image_size, image_size])
        image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [image_size, image_size, 3])
        return image, tf.cast(label, tf.int64)

    return ds.map(resize, num_parallel_calls=num_parallel_calls)


def _prepare(ds, image_size, *, shuffle, seed, cache, num_examples):
    """Resize, cache, shuffle. Without a cache the raw images are shuffled before they are
    resized: the order is the same (a seeded shuffle's order depends only on the number of
    elements), but each pass no longer waits for the buffer's images (up to 10,000) to be
    resized before its first batch, and the buffer holds uint8 images, not float32."""
    if cache:
        ds = resize_images(ds, image_size).cache()
    if shuffle:
        buffer = min(num_examples or 10_000, 10_000)
        ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    return ds if cache else resize_images(ds, image_size)


def check_contrastive_batch_size(batch_size, num_examples=None):
    """A contrastive batch needs 2+ images, and (drop_remainder) at most ``num_examples``."""
    if batch_size < 2:
        raise ConfigError(f"a contrastive loss needs batch size >= 2; got {batch_size}")
    if num_examples is not None and num_examples < batch_size:
        raise ConfigError(f"batch size {batch_size} is larger than the {num_examples} "
                          "training images; lower --batch-size")


def contrastive_batches(ds, image_size, batch_size, *, views=2, policy=CONTRASTIVE_POLICY,
                        shuffle=True, seed=None, cache=False, num_examples=None):
    """Batches of ``(views [B, V, S, S, 3], labels [B])``; incomplete batches are dropped."""
    check_contrastive_batch_size(batch_size, num_examples)
    ds = _prepare(ds, image_size, shuffle=shuffle, seed=seed, cache=cache,
                  num_examples=num_examples)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y: (make_views(x, views, policy), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def supervised_batches(ds, image_size, batch_size, *, augment=False, policy=WEAK_POLICY,
                       shuffle=False, seed=None, cache=False, num_examples=None,
                       drop_remainder=False):
    """Batches of ``(images [B, S, S, 3], labels [B])``, augmented if ``augment``
    (``drop_remainder``: full batches only)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1; got {batch_size}")
    ds = _prepare(ds, image_size, shuffle=shuffle, seed=seed, cache=cache,
                  num_examples=num_examples)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        ds = ds.map(lambda x, y: (augment_batch(x, policy), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def joint_targets(views, labels):
    """``(views [B, V, ...], labels [B])`` -> ``(views, targets)`` for a joint CE + SupCon
    model (:func:`~keras_supcon.models.build_joint_model`): the labels for the
    projections, and one per view ``[B, V]`` for the probabilities. For
    ``tf.data.Dataset.map`` (``contrastive_batches(...).map(joint_targets)``)."""
    per_view = tf.repeat(tf.expand_dims(labels, 1), tf.shape(views)[1], axis=1)
    return views, {"projections": labels, "probabilities": per_view}


def image_arrays(data, image_size):
    """``{split: (images float32 [N, S, S, 3] in [0, 255], labels int64 [N])}`` of a
    :class:`~keras_supcon.data.DataSplits` (resized with the package's ``resize_images``)."""
    arrays = {}
    for split in ("train", "val", "test"):
        xs, ys = [], []
        for x, y in resize_images(getattr(data, split), image_size).batch(1024):
            xs.append(x.numpy())
            ys.append(y.numpy())
        shape = (0, image_size, image_size, 3)
        arrays[split] = (np.concatenate(xs) if xs else np.zeros(shape, np.float32),
                         np.concatenate(ys) if ys else np.zeros((0,), np.int64))
    return arrays
