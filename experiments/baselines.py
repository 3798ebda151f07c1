"""Trivial baselines on the split every run uses (the bar a result must clear):
logistic regression and k-nearest neighbours on the raw pixels.

    python experiments/baselines.py                                        # digits
    python experiments/baselines.py ../shared/data/cifar10_subset.npz      # CIFAR-10 subset

Fitted on the training split only, as the library's runs are (the validation split
chooses, the test split measures): scikit-learn's logistic regression (L-BFGS) at
C = 1 on the raw pixel values; the library's linear-probe protocol on the pixels
(standardised, C chosen on validation: ``training.probe.fit_logistic_probe``); and
kNN (Euclidean, k chosen on validation). Results: docs/results.md.
"""

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from keras_supcon.data import load_dataset
from keras_supcon.training.probe import fit_logistic_probe


def arrays(split):
    x, y = zip(*((np.asarray(image, np.float64).ravel(), int(label))
                 for image, label in split.as_numpy_iterator()))
    return np.stack(x), np.array(y)


def main(dataset="digits"):
    data = load_dataset(dataset)
    (x, y), (xv, yv), (xt, yt) = (arrays(s) for s in (data.train, data.val, data.test))
    plain = LogisticRegression(max_iter=5000).fit(x, y).score(xt, yt)
    kernel, bias, report = fit_logistic_probe((x, y), (xv, yv), data.num_classes)
    probe = float(np.mean((xt @ kernel + bias).argmax(axis=1) == yt))
    knns = {k: KNeighborsClassifier(k).fit(x, y) for k in (1, 3, 5, 10, 20)}
    k = max(knns, key=lambda k: knns[k].score(xv, yv))
    knn = knns[k].score(xt, yt)
    print(f"{data.name} test split ({len(yt)} images), raw pixels: logistic regression "
          f"{plain:.4f} (C=1); probe protocol {probe:.4f} (C={report['C']:g} chosen on "
          f"validation); {k}-NN {knn:.4f} (k chosen on validation)")


if __name__ == "__main__":
    main(*sys.argv[1:])
