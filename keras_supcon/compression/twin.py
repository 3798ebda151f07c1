"""The tf_keras twin of a Keras 3 classifier, for tensorflow-model-optimization.

tfmot wraps only ``tf_keras`` (Keras 2) layers. Our classifiers are Keras 3, built
by :func:`keras_supcon.models.build_classifier`; the twin is the same builder
called with ``K=tf_keras`` and the weights copied over. For every registered
backbone the layer lists and weight order of the two match, so the copy is a
plain ``set_weights(get_weights())``, checked shape by shape here and output by
output in the tests. The same function rebuilds a Keras 3 model from a pruned,
stripped twin, so users get a Keras 3 model back and never see the twin.
"""

import keras

from keras_supcon.errors import ConfigError
from keras_supcon.models import build_classifier, build_encoder, set_batchnorm_momentum
from keras_supcon.models.batchnorm import batchnorm_layers
from keras_supcon.models.build import ENCODER_PREFIX


def classifier_architecture(classifier):
    """``(backbone, image_size, num_classes, dropout, hidden, l2, bn_momentum)`` of a
    classifier from :func:`~keras_supcon.models.build_classifier` (``hidden``: width of
    its hidden layer, or None; ``l2``: the penalty on its kernels; ``bn_momentum``: that of
    its BatchNorm layers, None without any)."""
    encoders = [layer for layer in classifier.layers if layer.name.startswith(ENCODER_PREFIX)]
    if len(encoders) != 1:
        raise ConfigError(
            f"model {classifier.name!r} is not a keras_supcon classifier (expected one "
            f"'{ENCODER_PREFIX}<backbone>' layer, found "
            f"{[layer.name for layer in classifier.layers]})")
    backbone = encoders[0].name[len(ENCODER_PREFIX):]
    image_size = int(classifier.input_shape[1])
    num_classes = int(classifier.output_shape[-1])
    dropout = next((float(layer.rate) for layer in classifier.layers
                    if layer.name == "dropout"), 0.0)
    hidden = next((int(layer.units) for layer in classifier.layers
                   if layer.name == "hidden"), None)
    regularizer = classifier.get_layer("probabilities").kernel_regularizer
    l2 = float(regularizer.get_config()["l2"]) if regularizer is not None else 0.0
    momenta = {float(layer.momentum) for layer in batchnorm_layers(classifier)}
    if len(momenta) > 1:
        raise ConfigError(f"model {classifier.name!r} has BatchNorm layers with several "
                          f"momenta {sorted(momenta)}; the twin keeps one")
    return backbone, image_size, num_classes, dropout, hidden, l2, next(iter(momenta), None)


def rebuild(classifier, K):
    """The architecture of ``classifier`` built fresh with Keras module ``K``
    (``tf_keras`` for the twin, ``keras`` for the way back), weights copied."""
    backbone, image_size, num_classes, dropout, hidden, l2, momentum = \
        classifier_architecture(classifier)
    model = build_classifier(build_encoder(backbone, image_size, K=K), num_classes,
                             dropout=dropout, hidden=hidden, l2=l2, K=K)
    if momentum is not None:  # the run's, not Keras' default 0.99
        set_batchnorm_momentum(model, momentum)
    copy_weights(classifier, model)
    return model


def to_tf_keras(classifier):
    """The tf_keras twin of a Keras 3 classifier, with its weights."""
    import tf_keras

    return rebuild(classifier, tf_keras)


def to_keras(twin):
    """A Keras 3 classifier with the architecture and weights of a tf_keras twin."""
    return rebuild(twin, keras)


def copy_weights(source, target):
    """``target.set_weights(source.get_weights())`` after checking every shape."""
    src, dst = source.weights, target.weights
    if len(src) != len(dst):
        raise ConfigError(f"cannot copy weights: {source.name} has {len(src)} weight "
                          f"tensors, {target.name} has {len(dst)}")
    for a, b in zip(src, dst):
        if tuple(a.shape) != tuple(b.shape):
            raise ConfigError(f"cannot copy weights: {a.name} {tuple(a.shape)} does not "
                              f"match {b.name} {tuple(b.shape)}")
    target.set_weights(source.get_weights())
    return target
