"""Supervised contrastive loss (Khosla et al. 2020) and SimCLR / NT-Xent.

For anchors ``i`` in ``I`` (all ``N = B * V`` views of a batch), with
``s_ia = z_i . z_a / T`` on L2-normalised embeddings, ``A(i) = I \\ {i}`` and
``P(i)`` the other anchors with the label of ``i``:

- ``variant="out"`` (paper eq. 2)::

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )

- ``variant="in"`` (paper eq. 3)::

    L_i = -log( 1/|P(i)| sum_{p in P(i)} exp(s_ip) / sum_{a in A(i)} exp(s_ia) )

The loss is the mean of ``L_i`` over anchors with ``|P(i)| > 0``; an anchor
without a positive is left out (the reference PyTorch implementation divides by
zero there), so value and gradient stay finite for any labels. With no anchor
having a positive the loss is 0. Without labels the positives of an anchor are
the other views of its own image: the SimCLR / NT-Xent loss.

The loss and its gradient come from the blocked kernel of
:mod:`~keras_supcon.losses.kernel`; on several ``tf.distribute`` replicas the
anchors are compared with the global batch (:mod:`~keras_supcon.losses.replicas`).
"""

import keras
from keras import ops

from keras_supcon.losses.kernel import batch_softmax_loss
from keras_supcon.losses.similarity import check_temperature, flatten_views

VARIANTS = ("out", "in")


def supcon_loss(features, labels=None, *, temperature=0.1, variant="out"):
    """Supervised contrastive loss of a batch.

    Args:
        features: ``[B, V, D]`` embeddings (``V >= 1`` views per image) or
            ``[B, D]`` (one view). Normalised to unit length inside.
        labels: ``[B]`` integer class labels, or ``None`` for SimCLR, where
            the positives of an anchor are the other views of the same image.
        temperature: the softmax temperature ``T > 0``.
        variant: ``"out"`` (paper eq. 2, the recommended form) or ``"in"``
            (eq. 3).

    Returns:
        A scalar: the mean per-anchor loss over anchors with a positive.
    """
    temperature = check_temperature(temperature)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
    z, labels, views = flatten_views(features, labels)
    ids_per = None
    if labels is None:
        if views < 2:
            raise ValueError(
                "SimCLR (supcon_loss without labels) needs at least 2 views per "
                "image: features of shape [B, V>=2, D]."
            )
        num_images = ops.shape(z)[0] // views
        labels = ops.repeat(ops.arange(num_images), views)
        ids_per = views
    return batch_softmax_loss(z, labels, temperature=temperature, mode=f"supcon_{variant}",
                              ids_per=ids_per)


@keras.saving.register_keras_serializable(package="keras_supcon")
class SupConLoss(keras.losses.Loss):
    """:func:`supcon_loss` as a Keras loss: ``model.compile(loss=SupConLoss())``.

    ``y_true`` is the ``[B]`` label vector and ``y_pred`` the model's
    ``[B, V, D]`` (or ``[B, D]``) embeddings. With ``supervised=False`` the
    labels are ignored and the loss is SimCLR's NT-Xent (see :class:`SimCLRLoss`).
    The loss is already a mean over anchors, so sample weights are not supported.
    """

    def __init__(self, temperature=0.1, variant="out", supervised=True,
                 name="supcon_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_temperature(temperature)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
        self.variant = variant
        self.supervised = bool(supervised)

    def call(self, y_true, y_pred):
        labels = y_true if self.supervised else None
        return supcon_loss(y_pred, labels, temperature=self.temperature,
                           variant=self.variant)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, variant=self.variant,
                      supervised=self.supervised)
        return config


@keras.saving.register_keras_serializable(package="keras_supcon")
class SimCLRLoss(SupConLoss):
    """SimCLR / NT-Xent: :class:`SupConLoss` whose positives are the other views
    of the same image; ``y_true`` is ignored (pass anything, e.g. the labels)."""

    def __init__(self, temperature=0.1, name="simclr_loss", **kwargs):
        kwargs.pop("supervised", None)
        kwargs.pop("variant", None)
        super().__init__(temperature=temperature, variant="out", supervised=False,
                         name=name, **kwargs)
