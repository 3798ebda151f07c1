"""Backbones, heads and the models built from them (Keras 3 or tf_keras twin)."""

from keras_supcon.models.backbones import BACKBONES, build_backbone, get_backbone
from keras_supcon.models.batchnorm import precise_batchnorm, set_batchnorm_momentum
from keras_supcon.models.build import (
    build_barlow_projector,
    build_classifier,
    build_contrastive_model,
    build_encoder,
    build_joint_model,
    build_projection_head,
    freeze,
)
from keras_supcon.models.layers import ImagePreprocess

__all__ = [
    "BACKBONES", "get_backbone", "build_backbone", "build_encoder", "build_projection_head",
    "build_contrastive_model", "build_joint_model", "build_barlow_projector", "build_classifier",
    "freeze", "ImagePreprocess", "precise_batchnorm", "set_batchnorm_momentum",
]
