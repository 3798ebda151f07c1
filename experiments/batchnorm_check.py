"""Test accuracy of the backbone ablation's ce classifiers before / after BatchNorm
recalibration (moving mean / variance recomputed over the training split, no weight change).

    python experiments/batchnorm_check.py     # after experiments/backbone_ablation_cpu.toml

Results and why: docs/experiments.md.
"""
import keras

from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.evaluation import predict
from keras_supcon.models import precise_batchnorm

data = load_dataset("../shared/data/cifar10_subset.npz")
for name, size in [("inceptionv3-ce", 75), ("inceptionresnetv2-ce", 75), ("densenet201-ce", 32)]:
    clf = keras.models.load_model(f"runs/backbone_ablation_cpu/{name}/classifier.keras")
    test = supervised_batches(data.test, size, 128)
    p, y = predict(clf, test)
    before = (p.argmax(1) == y).mean()
    precise_batchnorm(clf, supervised_batches(data.train, size, 64, shuffle=True, seed=0))
    p, y = predict(clf, test)
    after = (p.argmax(1) == y).mean()
    print(f"{name}: test accuracy {before:.4f} -> {after:.4f} after BatchNorm recalibration",
          flush=True)
