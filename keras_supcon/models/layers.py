"""Layers of our own, written once for Keras 3 and for its tf_keras twin."""

import keras
import numpy as np
from keras import ops

# keras.applications preprocess_input modes as a per-channel affine map:
#   out = x[..., ::-1 if reverse] * scale + offset,  x raw RGB in [0, 255].
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
PREPROCESS_MODES = {
    # "caffe": RGB -> BGR, subtract the ImageNet BGR mean (ResNet50).
    "caffe": (True, np.ones(3), -_CAFFE_MEAN_BGR),
    # "torch": scale to [0, 1], normalise by ImageNet mean / std (DenseNet).
    "torch": (False, 1.0 / (255.0 * _IMAGENET_STD), -_IMAGENET_MEAN / _IMAGENET_STD),
    # "tf": scale to [-1, 1] (Inception, and our small backbones).
    "tf": (False, np.full(3, 1.0 / 127.5), np.full(3, -1.0)),
}


class _ImagePreprocessMixin:
    """Raw RGB images in [0, 255] -> what a backbone expects (its ``preprocess_input``)."""

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode must be one of {sorted(PREPROCESS_MODES)}; got {mode!r}.")
        self.mode = mode
        self._reverse, scale, offset = PREPROCESS_MODES[mode]
        self._scale = scale.astype("float32")
        self._offset = offset.astype("float32")

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self._reverse:
            x = ops.flip(x, axis=-1)
        scale = ops.cast(self._scale, x.dtype)
        offset = ops.cast(self._offset, x.dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="keras_supcon")
class ImagePreprocess(_ImagePreprocessMixin, keras.layers.Layer):
    __doc__ = _ImagePreprocessMixin.__doc__


_TWIN_CLASSES = {}


def image_preprocess_class(K):
    """The ``ImagePreprocess`` layer class for Keras module ``K`` (keras or tf_keras)."""
    if K is keras:
        return ImagePreprocess
    if K not in _TWIN_CLASSES:
        _TWIN_CLASSES[K] = type("ImagePreprocess", (_ImagePreprocessMixin, K.layers.Layer),
                                {"__doc__": _ImagePreprocessMixin.__doc__})
    return _TWIN_CLASSES[K]


@keras.saving.register_keras_serializable(package="keras_supcon")
class FoldViews(keras.layers.Layer):
    """``[B, V, ...]`` -> ``[B * V, ...]`` (row ``b * V + v``): all views as one batch.

    Keras 3's ``TimeDistributed`` calls the wrapped model once per view instead,
    so BatchNorm would see each view apart and a step would run the encoder
    ``V`` times on ``B`` images rather than once on ``B * V``.
    """

    def call(self, inputs):
        return ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * input_shape[1]
        return (batch,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="keras_supcon")
class UnfoldViews(keras.layers.Layer):
    """``[B * V, ...]`` -> ``[B, V, ...]``, the inverse of :class:`FoldViews`."""

    def __init__(self, views, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.views) + tuple(inputs.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.views
        return (batch, self.views) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config["views"] = self.views
        return config
