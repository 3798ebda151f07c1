"""Data sources, splits, augmentation (views) and tf.data pipelines."""

from keras_supcon.data.augment import (
    CONTRASTIVE_POLICY,
    POLICIES,
    WEAK_POLICY,
    AugmentPolicy,
    RandomAugment,
    augment_batch,
    default_policy_name,
    get_policy,
    make_views,
)
from keras_supcon.data.pipeline import contrastive_batches, joint_targets, supervised_batches
from keras_supcon.data.sources import DataSplits, from_arrays, load_dataset, load_npz

__all__ = [
    "DataSplits", "load_dataset", "load_npz", "from_arrays", "contrastive_batches",
    "supervised_batches", "AugmentPolicy", "CONTRASTIVE_POLICY", "WEAK_POLICY", "POLICIES",
    "get_policy", "default_policy_name", "make_views", "augment_batch", "RandomAugment",
    "joint_targets",
]
