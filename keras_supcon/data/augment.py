"""Augmentations on whole batches (vectorised ``tf`` ops, for ``tf.data``).

Images are float32 ``[B, S, S, 3]`` in [0, 255]. Every random choice is drawn
per image, so one call augments a batch the way a per-image map would, at the
cost of a few batched kernels instead of B small ones.
"""

import math
from dataclasses import asdict, dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentPolicy:
    """The SimCLR / SupCon policy (defaults: torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.1)``
    applied with probability 0.8, grayscale with probability 0.2)."""

    crop_scale: tuple = (0.2, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2

    def to_dict(self):
        return asdict(self)


CONTRASTIVE_POLICY = AugmentPolicy()
# For the classifier stages (linear evaluation, cross-entropy): crop and flip only.
WEAK_POLICY = AugmentPolicy(crop_scale=(0.5, 1.0), brightness=0.0, contrast=0.0,
                            saturation=0.0, hue=0.0, jitter_prob=0.0, grayscale_prob=0.0)


def _uniform(batch, lo, hi):
    return tf.random.uniform([batch], lo, hi)


def _per_image(values):
    return tf.reshape(values, [-1, 1, 1, 1])


def random_resized_crop(images, scale, ratio):
    """Crop a random box (area fraction in ``scale``, aspect in ``ratio``) and resize back."""
    shape = tf.shape(images)
    batch, size = shape[0], shape[1:3]
    area = _uniform(batch, scale[0], scale[1])
    log_ratio = _uniform(batch, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    w = tf.minimum(tf.sqrt(area * aspect), 1.0)
    h = tf.minimum(tf.sqrt(area / aspect), 1.0)
    y0 = _uniform(batch, 0.0, 1.0) * (1.0 - h)
    x0 = _uniform(batch, 0.0, 1.0) * (1.0 - w)
    boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), size)


def _grayscale(images):
    return tf.repeat(tf.image.rgb_to_grayscale(images), 3, axis=-1)


def color_jitter(images, policy):
    """Brightness, contrast, saturation, hue (in this order), factors per image."""
    batch = tf.shape(images)[0]
    x = images
    if policy.brightness:
        x = x * _per_image(_uniform(batch, 1 - policy.brightness, 1 + policy.brightness))
    if policy.contrast:
        mean = tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True)
        f = _per_image(_uniform(batch, 1 - policy.contrast, 1 + policy.contrast))
        x = (x - mean) * f + mean
    if policy.saturation:
        gray = _grayscale(x)
        f = _per_image(_uniform(batch, 1 - policy.saturation, 1 + policy.saturation))
        x = gray + (x - gray) * f
    x = tf.clip_by_value(x, 0.0, 255.0)
    if policy.hue:
        hsv = tf.image.rgb_to_hsv(x / 255.0)
        shift = _per_image(_uniform(batch, -policy.hue, policy.hue))[..., 0]
        h = tf.math.floormod(hsv[..., 0] + shift, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def _apply_with_prob(images, augmented, prob):
    keep = tf.random.uniform([tf.shape(images)[0]]) < prob
    return tf.where(_per_image(keep), augmented, images)


def augment_batch(images, policy=CONTRASTIVE_POLICY):
    """One random view of each image of ``images`` (float32 ``[B, S, S, 3]`` in [0, 255])."""
    x = tf.cast(images, tf.float32)
    x = random_resized_crop(x, policy.crop_scale, policy.crop_ratio)
    if policy.flip:
        x = _apply_with_prob(x, tf.reverse(x, axis=[2]), 0.5)
    if policy.jitter_prob > 0:
        x = _apply_with_prob(x, color_jitter(x, policy), policy.jitter_prob)
    if policy.grayscale_prob > 0:
        x = _apply_with_prob(x, _grayscale(x), policy.grayscale_prob)
    return x


def make_views(images, views=2, policy=CONTRASTIVE_POLICY):
    """``[B, S, S, 3]`` -> ``[B, V, S, S, 3]``: ``V`` independent random views per image."""
    return tf.stack([augment_batch(images, policy) for _ in range(views)], axis=1)
