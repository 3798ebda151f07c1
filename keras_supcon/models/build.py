"""Build the models of the recipe, for Keras 3 or (``K=tf_keras``) its twin.

- encoder: raw RGB images ``[B, S, S, 3]`` in [0, 255] -> pooled features ``[B, F]``
  (the backbone's ``preprocess_input`` is the encoder's first layer);
- projection head: features ``[B, F]`` -> L2-normalised embeddings ``[B, P]``;
- contrastive model: views ``[B, V, S, S, 3]`` -> embeddings ``[B, V, P]``, the
  input of :class:`~keras_supcon.losses.SupConLoss` / ``NPairsLoss``;
- Barlow Twins projector: features ``[B, F]`` -> ``[B, P]`` through
  ``Dense-BN-ReLU`` blocks (no L2 normalisation: the loss standardises per dimension);
- classifier: images -> class probabilities, on an encoder that is frozen for
  linear evaluation (``encoder.trainable = False`` also puts its BatchNorm
  layers in inference mode) or trainable for the cross-entropy baseline; a
  linear softmax on the features, or (``hidden=H``) one hidden ReLU layer first.
"""

import keras

from keras_supcon.models.backbones import build_backbone, get_backbone, resolve_image_size
from keras_supcon.models.layers import FoldViews, UnfoldViews, image_preprocess_class

ENCODER_PREFIX = "encoder_"  # an encoder is named encoder_<backbone> inside its classifier


def build_encoder(backbone="small_resnet", image_size=None, weights=None, *, K=keras):
    """Backbone ``backbone`` with its preprocessing and global average pooling."""
    spec = get_backbone(backbone)
    size = resolve_image_size(spec, image_size)
    inputs = K.Input((size, size, 3), name="images")
    x = image_preprocess_class(K)(spec.preprocess, name="preprocess")(inputs)
    features = build_backbone(backbone, (size, size, 3), weights, K=K)(x)
    return K.Model(inputs, features, name=ENCODER_PREFIX + backbone)


def build_projection_head(input_dim, hidden_dim=512, projection_dim=128, *, K=keras):
    """MLP ``Dense(hidden, relu) -> Dense(projection_dim)`` then L2 normalisation."""
    inputs = K.Input((input_dim,), name="features")
    x = K.layers.Dense(hidden_dim, activation="relu", name="head_hidden")(inputs)
    x = K.layers.Dense(projection_dim, name="head_projection")(x)
    x = K.layers.UnitNormalization(axis=-1, name="head_l2", dtype="float32")(x)
    return K.Model(inputs, x, name="projection_head")


def build_barlow_projector(input_dim, width=8192, projection_dim=8192, *, depth=3, K=keras):
    """Barlow Twins projector (Zbontar et al. 2021): ``depth - 1`` blocks of
    ``Dense(width) -> BatchNorm -> ReLU``, then ``Dense(projection_dim)``.

    The paper uses ``width = projection_dim = 8192`` and ``depth = 3``.
    """
    inputs = K.Input((input_dim,), name="features")
    x = inputs
    for i in range(1, depth):
        x = K.layers.Dense(width, use_bias=False, name=f"projector_dense{i}")(x)
        x = K.layers.BatchNormalization(name=f"projector_bn{i}")(x)
        x = K.layers.ReLU(name=f"projector_relu{i}")(x)
    x = K.layers.Dense(projection_dim, use_bias=False, dtype="float32",
                       name="projector_out")(x)
    return K.Model(inputs, x, name="barlow_projector")


def build_joint_model(encoder, head, classifier, views=2):
    """``[B, V, S, S, 3]`` views -> ``{"projections": [B, V, P], "probabilities":
    [B, V, K]}``: the contrastive model of ``encoder`` and ``head`` with the softmax
    layer of ``classifier`` (from :func:`build_classifier`, linear, on the same
    ``encoder``) on every view's features; all weights shared. Compile it with a
    contrastive loss on ``projections`` and cross-entropy on ``probabilities``
    (``--loss supcon+ce``)."""
    image_shape = tuple(encoder.input_shape[1:])
    inputs = keras.Input((views,) + image_shape, name="views")
    features = encoder(FoldViews(name="fold_views")(inputs))
    softmax = classifier.get_layer("probabilities")
    outputs = {"projections": UnfoldViews(views, name="unfold_projections")(head(features)),
               "probabilities": UnfoldViews(views, name="unfold_probabilities",
                                                dtype="float32")(softmax(features))}
    return keras.Model(inputs, outputs, name="joint_model")


def build_contrastive_model(encoder, head, views=2):
    """``[B, V, S, S, 3]`` views -> ``[B, V, P]`` embeddings (encoder and head shared).

    The ``V`` views of a batch go through the encoder together as one batch of
    ``B * V`` images (:class:`FoldViews`), so BatchNorm statistics cover all
    views, as in the SupCon reference code (``torch.cat`` of the views).
    """
    image_shape = tuple(encoder.input_shape[1:])
    inputs = keras.Input((views,) + image_shape, name="views")
    images = FoldViews(name="fold_views")(inputs)
    embeddings = head(encoder(images))
    return keras.Model(inputs, UnfoldViews(views, name="unfold_views")(embeddings),
                       name="contrastive_model")


def build_classifier(encoder, num_classes, *, dropout=0.0, hidden=None, l2=0.0, K=keras):
    """Images -> softmax probabilities over ``num_classes`` on top of ``encoder``.

    ``hidden``: width of one hidden ReLU layer between the features and the
    softmax (``fine_tune_nn``); ``None`` is a linear softmax (``fine_tune_linear``).
    ``l2``: L2 penalty ``l2 * sum(w^2)`` on the kernels of these layers.
    """
    image_shape = tuple(encoder.input_shape[1:])
    regularizer = K.regularizers.L2(l2) if l2 else None
    inputs = K.Input(image_shape, name="images")
    x = encoder(inputs)
    if hidden:
        # float32 under mixed precision too: the nn probe folds the feature
        # standardisation into this kernel (large values where a feature barely varies)
        x = K.layers.Dense(hidden, activation="relu", kernel_regularizer=regularizer,
                           dtype="float32", name="hidden")(x)
    if dropout:
        x = K.layers.Dropout(dropout, name="dropout")(x)
    outputs = K.layers.Dense(num_classes, activation="softmax", dtype="float32",
                             kernel_regularizer=regularizer, name="probabilities")(x)
    return K.Model(inputs, outputs, name="classifier")


def freeze(encoder):
    """Freeze ``encoder`` for linear evaluation (weights fixed, BatchNorm in inference mode)."""
    encoder.trainable = False
    return encoder
