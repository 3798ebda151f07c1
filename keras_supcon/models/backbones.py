"""The backbone registry: one place maps a name to its builder, input size and preprocessing.

Every builder takes the Keras module ``K`` (``keras`` or ``tf_keras``), so the
Keras 3 model and its tf_keras twin (for tfmot pruning) come from the same code.
A builder returns a model mapping preprocessed images to pooled features.
"""

import os
from dataclasses import dataclass
from typing import Callable

from keras_supcon.errors import ConfigError, OfflineError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable  # (K, input_shape, weights) -> Model, preprocessed image -> [B, F]
    preprocess: str  # a keras_supcon.models.layers.PREPROCESS_MODES key
    min_size: int  # smallest input height / width the architecture accepts
    default_size: int  # used when no image size is given
    has_imagenet: bool = True


def _application(attr):
    def build(K, input_shape, weights):
        return getattr(K.applications, attr)(
            include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
    build.__name__ = f"build_{attr}"
    return build


def _basic_block(L, x, filters, stride, name):
    shortcut = x
    y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                 name=f"{name}_conv1")(x)
    y = L.BatchNormalization(name=f"{name}_bn1")(y)
    y = L.ReLU(name=f"{name}_relu1")(y)
    y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = L.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = L.Conv2D(filters, 1, strides=stride, use_bias=False,
                            name=f"{name}_proj")(x)
        shortcut = L.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = L.Add(name=f"{name}_add")([y, shortcut])
    return L.ReLU(name=f"{name}_out")(y)


def build_small_resnet(K, input_shape, weights=None, widths=(32, 64, 128)):
    """A compact ResNet (3x3 stem, one basic block per stage, strides 1, 2, 2).

    About 0.3 M parameters at the default widths: trains in seconds on a CPU.
    """
    L = K.layers
    inputs = L.Input(input_shape)
    x = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    for i, filters in enumerate(widths):
        x = _basic_block(L, x, filters, 1 if i == 0 else 2, name=f"stage{i + 1}")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return K.Model(inputs, x, name="small_resnet")


BACKBONES = {
    spec.name: spec
    for spec in [
        BackboneSpec("small_resnet", build_small_resnet, "tf", 8, 32, has_imagenet=False),
        BackboneSpec("resnet50", _application("ResNet50"), "caffe", 32, 32),
        BackboneSpec("densenet169", _application("DenseNet169"), "torch", 32, 32),
        BackboneSpec("densenet201", _application("DenseNet201"), "torch", 32, 32),
        BackboneSpec("inceptionv3", _application("InceptionV3"), "tf", 75, 75),
        BackboneSpec("inceptionresnetv2", _application("InceptionResNetV2"), "tf", 75, 75),
    ]
}


def get_backbone(name):
    """The :class:`BackboneSpec` registered as ``name``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def resolve_image_size(spec, image_size=None):
    """``image_size`` checked against the backbone's minimum (default: its default size)."""
    if image_size is None:
        return spec.default_size
    image_size = int(image_size)
    if image_size < spec.min_size:
        raise ConfigError(
            f"image size {image_size} is below the minimum of {spec.name} "
            f"({spec.min_size}x{spec.min_size}); use --image-size {spec.min_size} or more")
    return image_size


def normalize_weights(weights):
    """``None``/"none" -> None, "imagenet" -> "imagenet", anything else must be a file."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path} (use none, imagenet or a file path)")
    return path


def build_backbone(name, input_shape, weights=None, *, K=None):
    """Build backbone ``name`` with Keras module ``K`` (default: keras).

    ``weights``: None, "imagenet" (downloads; needs the network) or the path of
    a weights file for this backbone (works offline).
    """
    import keras

    K = K or keras
    spec = get_backbone(name)
    weights = normalize_weights(weights)
    if weights == "imagenet" and not spec.has_imagenet:
        raise ConfigError(f"{name} has no ImageNet weights; use --weights none or a file path")
    if weights == "imagenet":
        try:
            return spec.build(K, input_shape, "imagenet")
        except Exception as exc:  # get_file raises a bare Exception on URL errors
            if "URL fetch failure" in str(exc) or isinstance(exc, OSError):
                raise OfflineError(
                    f"ImageNet weights for {name} could not be downloaded (no network?): "
                    f"{str(exc).splitlines()[0]}. Use --weights none, or --weights PATH "
                    f"with a local weights file") from exc
            raise
    model = spec.build(K, input_shape, None)
    if weights is not None:
        try:
            model.load_weights(weights)
        except Exception as exc:  # h5py / keras raise many types for a bad file
            raise ConfigError(
                f"could not load {name} weights from {weights}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return model
