"""Augmentations on whole batches (vectorised ``tf`` ops, for ``tf.data``).

Images are float32 ``[B, S, S, 3]`` in [0, 255]. Every random choice is drawn
per image, so one call augments a batch the way a per-image map would, at the
cost of a few batched kernels instead of B small ones.
"""

import dataclasses
import math
from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from keras_supcon.errors import ConfigError, check_choice


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

    @property
    def is_identity(self):
        return (tuple(self.crop_scale) == (1.0, 1.0) and tuple(self.crop_ratio) == (1.0, 1.0)
                and not self.flip and not self.jitter_prob and not self.grayscale_prob)

    def weak(self):
        """This policy for the classifier stages: its crops (at least half the area) and
        flips, no colour changes."""
        low, high = self.crop_scale
        return dataclasses.replace(self, crop_scale=(max(low, 0.5), high), brightness=0.0,
                                   contrast=0.0, saturation=0.0, hue=0.0, jitter_prob=0.0,
                                   grayscale_prob=0.0)

    def override(self, *, crop_scale=None, flip=None, jitter=None):
        """This policy with parts replaced: ``crop_scale`` the smallest area fraction of a
        crop, ``flip`` horizontal flips on / off, ``jitter`` the colour-jitter strength
        ``s`` (brightness, contrast, saturation ``s``, hue ``s / 4``; 0: none)."""
        policy = self
        if crop_scale is not None:
            if not 0 < crop_scale <= 1:
                raise ConfigError(f"crop scale must be in (0, 1]; got {crop_scale}")
            policy = dataclasses.replace(policy, crop_scale=(float(crop_scale), 1.0))
        if flip is not None:
            policy = dataclasses.replace(policy, flip=bool(flip))
        if jitter is not None:
            if jitter < 0:
                raise ConfigError(f"colour-jitter strength must be >= 0; got {jitter}")
            keep = policy.jitter_prob or 0.8
            policy = dataclasses.replace(policy, brightness=jitter, contrast=jitter,
                                         saturation=jitter, hue=min(jitter / 4, 0.5),
                                         jitter_prob=keep if jitter else 0.0)
        return policy


CONTRASTIVE_POLICY = AugmentPolicy()
# For the classifier stages (linear evaluation, cross-entropy): crop and flip only.
WEAK_POLICY = CONTRASTIVE_POLICY.weak()
NO_AUGMENTATION = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                                brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                                jitter_prob=0.0, grayscale_prob=0.0)
# Named policies (``--augmentation``).
POLICIES = {
    # SimCLR / SupCon, for photos.
    "simclr": CONTRASTIVE_POLICY,
    # Digits, characters, grayscale images: a flip changes the class and a 20% crop can
    # cut the stroke that tells a 7 from a 1; milder crops, brightness / contrast only.
    "digits": AugmentPolicy(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip=False,
                            brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0,
                            jitter_prob=0.8, grayscale_prob=0.0),
    # Crop and flip only (the classifier stages' policy for photos).
    "weak": WEAK_POLICY,
    "none": NO_AUGMENTATION,
}
# The default policy of a data source (by its name); any other source: "simclr".
SOURCE_POLICIES = {"digits": "digits", "mnist": "digits", "emnist": "digits",
                   "kmnist": "digits"}


def default_policy_name(source_name):
    """The named policy a data source gets by default (``digits`` -> ``"digits"``;
    ``mnist.npz`` and TFDS ``emnist/letters`` count as ``mnist`` and ``emnist``)."""
    name = str(source_name).lower().split("/")[0]
    name = name[:-len(".npz")] if name.endswith(".npz") else name
    return SOURCE_POLICIES.get(name, "simclr")


def get_policy(name, *, crop_scale=None, flip=None, jitter=None):
    """Named policy ``name`` (a key of :data:`POLICIES`), parts overridden
    (:meth:`AugmentPolicy.override`)."""
    check_choice(name, POLICIES, "augmentation policy")
    return POLICIES[name].override(crop_scale=crop_scale, flip=flip, jitter=jitter)


def _seeds(seed, n):
    """``n`` independent stateless seeds ``[n, 2]`` derived from ``seed``."""
    return tf.random.experimental.stateless_split(seed, num=n)


def _uniform(seed, batch, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform([batch], seed, minval=lo, maxval=hi)


def _per_image(values):
    return tf.reshape(values, [-1, 1, 1, 1])


def draw_seed():
    """A stateless seed ``[2]`` drawn from TensorFlow's global random state: what the
    ops below use when no seed is given (in tf.data: a new draw per batch)."""
    return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)


def random_resized_crop(images, scale, ratio, seed=None):
    """Crop a random box (area fraction in ``scale``, aspect in ``ratio``) and resize back."""
    seed = draw_seed() if seed is None else seed
    s = _seeds(seed, 4)
    shape = tf.shape(images)
    batch, size = shape[0], shape[1:3]
    area = _uniform(s[0], batch, scale[0], scale[1])
    log_ratio = _uniform(s[1], batch, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    w = tf.minimum(tf.sqrt(area * aspect), 1.0)
    h = tf.minimum(tf.sqrt(area / aspect), 1.0)
    y0 = _uniform(s[2], batch) * (1.0 - h)
    x0 = _uniform(s[3], batch) * (1.0 - w)
    boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), size)


def _grayscale(images):
    return tf.repeat(tf.image.rgb_to_grayscale(images), 3, axis=-1)


def color_jitter(images, policy, seed=None):
    """Brightness, contrast, saturation, hue (in this order), factors per image."""
    seed = draw_seed() if seed is None else seed
    s = _seeds(seed, 4)
    batch = tf.shape(images)[0]
    x = images
    if policy.brightness:
        x = x * _per_image(_uniform(s[0], batch, 1 - policy.brightness, 1 + policy.brightness))
    if policy.contrast:
        mean = tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True)
        f = _per_image(_uniform(s[1], batch, 1 - policy.contrast, 1 + policy.contrast))
        x = (x - mean) * f + mean
    if policy.saturation:
        gray = _grayscale(x)
        f = _per_image(_uniform(s[2], batch, 1 - policy.saturation, 1 + policy.saturation))
        x = gray + (x - gray) * f
    x = tf.clip_by_value(x, 0.0, 255.0)
    if policy.hue:
        hsv = tf.image.rgb_to_hsv(x / 255.0)
        shift = _per_image(_uniform(s[3], batch, -policy.hue, policy.hue))[..., 0]
        h = tf.math.floormod(hsv[..., 0] + shift, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def _apply_with_prob(images, augmented, prob, seed):
    keep = _uniform(seed, tf.shape(images)[0]) < prob
    return tf.where(_per_image(keep), augmented, images)


def augment_batch(images, policy=CONTRASTIVE_POLICY, seed=None):
    """One random view of each image of ``images`` (float32 ``[B, S, S, 3]`` in [0, 255]).
    ``seed``: a stateless seed ``[2]`` (the same seed, the same view); default: drawn
    from TensorFlow's global random state."""
    x = tf.cast(images, tf.float32)
    if policy.is_identity:
        return x
    s = _seeds(draw_seed() if seed is None else seed, 5)
    x = random_resized_crop(x, policy.crop_scale, policy.crop_ratio, seed=s[0])
    if policy.flip:
        x = _apply_with_prob(x, tf.reverse(x, axis=[2]), 0.5, s[1])
    if policy.jitter_prob > 0:
        x = _apply_with_prob(x, color_jitter(x, policy, seed=s[2]), policy.jitter_prob, s[3])
    if policy.grayscale_prob > 0:
        x = _apply_with_prob(x, _grayscale(x), policy.grayscale_prob, s[4])
    return x


def make_views(images, views=2, policy=CONTRASTIVE_POLICY, seed=None):
    """``[B, S, S, 3]`` -> ``[B, V, S, S, 3]``: ``V`` independent random views per image."""
    s = _seeds(draw_seed() if seed is None else seed, views)
    return tf.stack([augment_batch(images, policy, seed=s[v]) for v in range(views)], axis=1)


@keras.saving.register_keras_serializable(package="keras_supcon")
class RandomAugment(keras.layers.Layer):
    """An augmentation policy as a Keras preprocessing layer (TensorFlow backend).

    Images ``[B, S, S, 3]`` in [0, 255] -> one random view of each (``views=None``)
    or ``views`` of each, ``[B, V, S, S, 3]``. Random in training only; with
    ``training=False`` it returns the images (``V`` copies with ``views``).
    ``policy``: a name of :data:`POLICIES`, an :class:`AugmentPolicy` or its dict.
    ``seed``: the same seed gives the same sequence of views; a loaded model starts
    that sequence again (the seed is in the config, the generator's position is not
    saved). Works in ``tf.data`` (``ds.map(layer)``) and inside a model; the ops are
    this module's batched ones.
    """

    def __init__(self, policy="simclr", views=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(policy, str):
            policy = get_policy(policy)
        elif isinstance(policy, dict):
            policy = AugmentPolicy(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in policy.items()})
        if not isinstance(policy, AugmentPolicy):
            raise ConfigError(f"policy must be a name, an AugmentPolicy or its dict; got "
                              f"{type(policy).__name__}")
        if views is not None and (not isinstance(views, int) or views < 1):
            raise ConfigError(f"views must be None or an int >= 1; got {views!r}")
        self.policy, self.views, self.seed = policy, views, seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="augment_seed")

    def call(self, images, training=True):
        x = tf.cast(images, tf.float32)
        if not training:
            return x if self.views is None else tf.stack([x] * self.views, axis=1)
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        if self.views is None:
            return augment_batch(x, self.policy, seed=seed)
        return make_views(x, self.views, self.policy, seed=seed)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        return shape if self.views is None else (shape[0], self.views) + shape[1:]

    def get_config(self):
        return {**super().get_config(), "policy": self.policy.to_dict(), "views": self.views,
                "seed": self.seed}
