"""The one builder of a run's models, from its settings (:class:`TrainConfig`).

Every job builds through here (training, fine-tuning, pseudo-labelling, the
lottery ticket, the ablation through training), so a fix to how a model is
built (the BatchNorm momentum, the ``nn`` probe's hidden layer, ``--weights``,
``--l2``) reaches all of them.
"""

import keras

from keras_supcon.losses import CenterLoss
from keras_supcon.losses.registry import LOSSES as LOSS_SPECS
from keras_supcon.models import (
    build_barlow_projector,
    build_classifier,
    build_contrastive_model,
    build_encoder,
    build_joint_model,
    build_projection_head,
    set_batchnorm_momentum,
)
from keras_supcon.models.build import ENCODER_PREFIX
from keras_supcon.training.settings import PRETRAIN_LOSSES


def encoder(config):
    """A new encoder: ``config.backbone`` at ``config.image_size`` with
    ``config.weights``, every BatchNorm layer at ``config.bn_momentum``."""
    model = build_encoder(config.backbone, config.image_size, config.weights)
    return set_batchnorm_momentum(model, config.bn_momentum)


def encoder_name(config):
    """The name of the encoder layer inside a run's classifier."""
    return ENCODER_PREFIX + config.backbone


def classifier(config, encoder_model, num_classes):
    """The run's classifier on ``encoder_model``: after pre-training, the ``config.probe``
    head (``nn``: one hidden layer of ``config.probe_hidden`` units); for the end-to-end
    losses, a linear softmax. L2 penalty ``config.l2`` on its kernels."""
    hidden = (config.probe_hidden if config.probe == "nn" and config.loss in PRETRAIN_LOSSES
              else None)
    return build_classifier(encoder_model, num_classes, l2=config.l2, hidden=hidden)


def new_classifier(config, num_classes):
    """A freshly initialised classifier of the run's architecture (encoder included),
    as the pseudo-labelling teacher and students and the lottery ticket train it."""
    return classifier(config, encoder(config), num_classes)


def projection_head(config, features):
    """The head of the pre-training loss on ``features``-wide encoder outputs: the
    Barlow Twins projector or the SupCon projection head."""
    build = (build_barlow_projector if LOSS_SPECS[config.loss].head == "barlow"
             else build_projection_head)  # supcon+ce: the projection head
    head = build(features, config.head_hidden, config.projection_dim)
    return set_batchnorm_momentum(head, config.bn_momentum)


def contrastive_model(config, encoder_model, head):
    return build_contrastive_model(encoder_model, head, views=config.views)


def joint_model(config, encoder_model, classifier_model):
    """``--loss supcon+ce``: encoder + projection head + the classifier's softmax."""
    head = projection_head(config, encoder_model.output_shape[-1])
    return build_joint_model(encoder_model, head, classifier_model, views=config.views)


def center_loss_model(classifier_model, num_classes, weight, alpha):
    """``classifier_model`` (from :func:`classifier`) with a :class:`CenterLoss` on its
    encoder features: ``(images, labels) -> probabilities``, for ``model.fit`` on
    ``((images, labels), labels)``. It shares every layer with ``classifier_model``."""
    images = keras.Input(classifier_model.input_shape[1:], name="images")
    labels = keras.Input((), dtype="int32", name="labels")
    layers = classifier_model.layers[1:]  # encoder, [hidden], [dropout], probabilities
    x = layers[0](images)
    x = CenterLoss(num_classes, weight=weight, alpha=alpha, name="center_loss")([x, labels])
    for layer in layers[1:]:
        x = layer(x)
    return keras.Model([images, labels], x, name="center_loss_classifier")
