"""Trivial baselines on the digits split every run uses (the bar a result must clear):
logistic regression and k-nearest neighbours on the raw 8x8 pixels.

    python experiments/digits_baselines.py

Fitted on the training split only, as the library's runs are (the validation split
chooses, the test split measures): logistic regression (scikit-learn L-BFGS) at
C = 1 and at the C of the probe's grid chosen on validation; kNN with k chosen on
validation. Results: docs/results.md.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from keras_supcon.data import load_dataset
from keras_supcon.training.probe import C_GRID


def arrays(split):
    x, y = zip(*((np.asarray(image, np.float64).ravel(), int(label))
                 for image, label in split.as_numpy_iterator()))
    return np.stack(x), np.array(y)


def main():
    data = load_dataset("digits")
    (x, y), (xv, yv), (xt, yt) = (arrays(s) for s in (data.train, data.val, data.test))
    fits = {c: LogisticRegression(C=c, max_iter=5000).fit(x, y) for c in C_GRID}
    c = max(C_GRID, key=lambda c: fits[c].score(xv, yv))
    logistic = fits[c].score(xt, yt)
    plain = LogisticRegression(max_iter=5000).fit(x, y).score(xt, yt)
    knns = {k: KNeighborsClassifier(k).fit(x, y) for k in (1, 3, 5, 10, 20)}
    k = max(knns, key=lambda k: knns[k].score(xv, yv))
    knn = knns[k].score(xt, yt)
    print(f"digits test split ({len(yt)} images): logistic regression on raw pixels "
          f"{plain:.4f} (C=1), {logistic:.4f} (C={c:g} chosen on validation); "
          f"{k}-NN on raw pixels {knn:.4f} (k chosen on validation)")


if __name__ == "__main__":
    main()
