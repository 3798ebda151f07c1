"""Representation-learning losses (``keras.ops``, any backend).

- :mod:`~keras_supcon.losses.supcon`: supervised contrastive (SupCon) and
  SimCLR / NT-Xent losses on a similarity matrix;
- :mod:`~keras_supcon.losses.npairs`: the npairs loss of the Keras SupCon tutorial;
- :mod:`~keras_supcon.losses.triplet`: triplet loss with batch-hard, batch-all
  and random mining;
- :mod:`~keras_supcon.losses.center`: center loss, a layer that keeps and
  updates per-class centres;
- :mod:`~keras_supcon.losses.barlow`: Barlow Twins (cross-correlation) loss;
- :mod:`~keras_supcon.losses.joint`: cross-entropy + SupCon in one ``model.fit``;
- :mod:`~keras_supcon.losses.registry`: the losses a run can train with, by name
  (``LOSSES``: kind, head, settings, default temperature, builder).
"""

from keras_supcon.losses.barlow import BarlowTwinsLoss, barlow_twins_loss
from keras_supcon.losses.center import CenterLoss, center_loss, update_centers
from keras_supcon.losses.joint import joint_loss
from keras_supcon.losses.npairs import NPairsLoss, npairs_loss
from keras_supcon.losses.registry import LOSSES, LossSpec, get_loss_spec
from keras_supcon.losses.supcon import SimCLRLoss, SupConLoss, supcon_loss
from keras_supcon.losses.triplet import TripletLoss, random_triplets, triplet_loss

__all__ = [
    "supcon_loss", "npairs_loss", "SupConLoss", "SimCLRLoss", "NPairsLoss",
    "triplet_loss", "random_triplets", "TripletLoss",
    "center_loss", "update_centers", "CenterLoss",
    "barlow_twins_loss", "BarlowTwinsLoss", "joint_loss", "LOSSES", "LossSpec", "get_loss_spec",
]
