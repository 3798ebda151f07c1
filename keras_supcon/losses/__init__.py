"""Contrastive losses built on a similarity matrix (``keras.ops``, any backend)."""

from keras_supcon.losses.npairs import NPairsLoss, npairs_loss
from keras_supcon.losses.supcon import SimCLRLoss, SupConLoss, supcon_loss

__all__ = ["supcon_loss", "npairs_loss", "SupConLoss", "SimCLRLoss", "NPairsLoss"]
