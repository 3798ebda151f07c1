"""Cross-entropy + SupCon in one ``model.fit`` (Gunel et al., ICLR 2021; Khosla et al.
2020 train the two in sequence): the Keras way is a model with two named outputs
(:func:`~keras_supcon.models.build_joint_model`) and one loss per output::

    model = build_joint_model(encoder, head, classifier, views=2)
    model.compile(optimizer="adam", **joint_loss(supcon_weight=1.0))
    model.fit(views_ds.map(data.joint_targets), ...)   # (views [B, V, ...], labels [B])

The total is ``CE(probabilities) + supcon_weight x SupCon(projections)``; Keras
reports both parts (``probabilities_loss``, ``projections_loss``) and
``probabilities_accuracy``.
"""

import keras

from keras_supcon.losses.supcon import SupConLoss


def joint_loss(supcon_weight=1.0, *, temperature=0.1, variant="out"):
    """The ``loss``, ``loss_weights`` and ``metrics`` arguments of ``model.compile``
    for a joint model: cross-entropy on every view's probabilities + ``supcon_weight``
    x :class:`SupConLoss` on the projections."""
    if not supcon_weight >= 0:
        raise ValueError(f"supcon_weight must be >= 0; got {supcon_weight}")
    return dict(
        loss={"projections": SupConLoss(temperature=temperature, variant=variant),
              "probabilities": keras.losses.SparseCategoricalCrossentropy()},
        loss_weights={"projections": float(supcon_weight), "probabilities": 1.0},
        metrics={"probabilities": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]})
