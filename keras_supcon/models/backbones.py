"""The backbone registry: one place maps a name to its builder, input size and preprocessing.

Every builder takes the Keras module ``K`` (``keras`` or ``tf_keras``), so the
Keras 3 model and its tf_keras twin (for tfmot pruning) come from the same code.
A builder returns a model mapping preprocessed images to pooled features.

Backbones (trainable parameters without a classifier top):

- ``small_resnet``: a compact 3-stage ResNet with a 3x3 stem, ~0.3 M (CPU-sized);
- ``resnet18``: ResNet-18 (He et al. 2016) from scratch, ImageNet stem
  (7x7/2 conv, 3x3/2 max-pool), 11.18 M, features ``[B, 512]``;
- ``resnet18_cifar``: the same network with the CIFAR stem of the SimCLR /
  SupContrast ResNets (3x3/1 conv, no max-pool), 11.17 M, ``[B, 512]``;
- ``vgg16bn``: the 13 convolutions of VGG-16 with BatchNorm (Simonyan & Zisserman
  2015; torchvision ``vgg16_bn`` layout) then global average pooling, 14.72 M,
  ``[B, 512]``;
- ``pixels``: no parameters, the flattened preprocessed image ``[B, S*S*3]``, the
  input of the softmax-regression and MLP baselines;
- ``resnet50``, ``densenet169``, ``densenet201``, ``inceptionv3``,
  ``inceptionresnetv2``: ``keras.applications``, optionally with ImageNet weights.

Our ResNets use ``padding="same"`` for every strided convolution and pooling
(on even sizes TensorFlow pads one pixel less top/left than PyTorch: shapes and
parameter counts are those of the papers, the sampling grid is shifted by one
pixel, immaterial when training from scratch), so their maps shrink as
``ceil(size / stride)`` and never below 1x1. Their ``min_size`` is the total
stride (32 for ``resnet18``, 8 for ``resnet18_cifar``): the smallest input that
reaches a 1x1 final map without the deepest stages running on padding alone.
VGG's 2x2 pools are unpadded, as in the paper, so 32 is a hard minimum there.
"""

import functools
import os
from dataclasses import dataclass
from typing import Callable

from keras_supcon.errors import ConfigError, OfflineError
from keras_supcon.losses.registry import END_TO_END, PRETRAIN


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable  # (K, input_shape, weights) -> Model, preprocessed image -> [B, F]
    preprocess: str  # a keras_supcon.models.layers.PREPROCESS_MODES key
    min_size: int  # smallest input height / width the architecture accepts
    default_size: int  # used when no image size is given
    has_imagenet: bool = True
    # Settings of a run on this backbone that differ from the library's defaults, by the
    # kind of its loss (losses.PRETRAIN / END_TO_END), chosen on the validation split
    # (docs/experiments.md): ((kind, setting, value), ...)
    defaults: tuple = ()

    def defaults_for(self, kind):
        """``{setting: value}`` of this backbone's own defaults for a loss of ``kind``."""
        return {name: value for k, name, value in self.defaults if k == kind}


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


def build_resnet18(K, input_shape, weights=None, *, cifar_stem=False):
    """ResNet-18 (He et al. 2016): basic blocks [2, 2, 2, 2], widths 64-512, strides
    1, 2, 2, 2; the first block of stages 2-4 has a 1x1 projection shortcut + BN.

    ``cifar_stem=False``: the ImageNet stem, 7x7/2 conv, BN, ReLU, 3x3/2 max-pool
    (total stride 32: 32x32 -> 1x1). ``cifar_stem=True``: 3x3/1 conv, BN, ReLU and no
    max-pool, as in the SimCLR / SupContrast CIFAR ResNets (total stride 8: 32x32 -> 4x4).
    Global average pooling -> ``[B, 512]``.
    """
    L = K.layers
    inputs = L.Input(input_shape)
    if cifar_stem:
        x = L.Conv2D(64, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    else:
        x = L.Conv2D(64, 7, strides=2, padding="same", use_bias=False,
                     name="stem_conv")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    if not cifar_stem:
        x = L.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for i, filters in enumerate((64, 128, 256, 512)):
        for j in range(2):
            stride = 2 if i > 0 and j == 0 else 1
            x = _basic_block(L, x, filters, stride, name=f"stage{i + 1}_block{j + 1}")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return K.Model(inputs, x, name="resnet18_cifar" if cifar_stem else "resnet18")


# VGG-16 (configuration "D"): filters of the 3x3 convolutions, "M" a 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")


def build_vgg16bn(K, input_shape, weights=None):
    """VGG-16 with BatchNorm, the torchvision ``vgg16_bn`` feature layout: 13 convs
    (3x3, same padding, with bias) each followed by BN and ReLU, five 2x2/2 max-pools
    (32x32 -> 1x1), then global average pooling -> ``[B, 512]`` instead of the
    fully-connected top (our heads go on top, as for the other backbones).
    """
    L = K.layers
    inputs = L.Input(input_shape)
    x = inputs
    block, conv = 1, 1
    for item in VGG16_LAYOUT:
        if item == "M":
            x = L.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
            block, conv = block + 1, 1
            continue
        name = f"block{block}_conv{conv}"
        x = L.Conv2D(item, 3, padding="same", name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        x = L.ReLU(name=f"{name}_relu")(x)
        conv += 1
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return K.Model(inputs, x, name="vgg16bn")


def build_pixels(K, input_shape, weights=None):
    """The identity backbone: the preprocessed image (scaled to [-1, 1]) flattened to
    ``[B, S*S*3]``, for softmax regression (a classifier straight on top) and MLP
    baselines on raw pixels. No weights."""
    inputs = K.layers.Input(input_shape)
    x = K.layers.Flatten(name="flatten_pixels")(inputs)
    return K.Model(inputs, x, name="pixels")


BACKBONES = {
    spec.name: spec
    for spec in [
        BackboneSpec("small_resnet", build_small_resnet, "tf", 8, 32, has_imagenet=False),
        # Total stride 32: 32 -> 1x1. Below 32 "same" padding still leaves a 1x1 map,
        # but the last stages would run on padding (e.g. at 16 stage 4 sees 1x1).
        BackboneSpec("resnet18", functools.partial(build_resnet18, cifar_stem=False),
                     "tf", 32, 32, has_imagenet=False),
        # Total stride 8: 8 -> 1x1, 32 -> 4x4.
        BackboneSpec("resnet18_cifar", functools.partial(build_resnet18, cifar_stem=True),
                     "tf", 8, 32, has_imagenet=False),
        # Five valid 2x2/2 pools: 32 -> 1x1; at 31 the last pool gets a 1x1 map -> 0x0.
        BackboneSpec("vgg16bn", build_vgg16bn, "tf", 32, 32, has_imagenet=False),
        # No spatial operation: every size is valid.
        BackboneSpec("pixels", build_pixels, "tf", 1, 32, has_imagenet=False),
        # 100 SupCon steps at lr 1e-3 leave ResNet-50 far from converged on digits (test
        # accuracy 0.81 with the library's defaults); lr 3e-3 and 20 epochs won on the
        # validation split (docs/experiments.md, section 0d). Its end-to-end classifier is
        # still learning after 20 epochs (cross-entropy 0.955 over 3 seeds, below the
        # raw-pixel baseline): 40 epochs, chosen on validation (section 0f).
        BackboneSpec("resnet50", _application("ResNet50"), "caffe", 32, 32,
                     defaults=((PRETRAIN, "lr", 3e-3), (PRETRAIN, "epochs", 20),
                               (END_TO_END, "epochs", 40))),
        BackboneSpec("densenet169", _application("DenseNet169"), "torch", 32, 32),
        BackboneSpec("densenet201", _application("DenseNet201"), "torch", 32, 32),
        # InceptionV3 with the library's defaults: SupCon 0.925 on digits, below the raw-pixel
        # baseline; lr 3e-3 and 10 epochs won on the validation split (0.993;
        # docs/experiments.md, section 0e).
        BackboneSpec("inceptionv3", _application("InceptionV3"), "tf", 75, 75,
                     defaults=((PRETRAIN, "lr", 3e-3), (PRETRAIN, "epochs", 10))),
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
