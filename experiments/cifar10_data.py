"""The two CIFAR-10 files of this project, rebuilt deterministically.

    # the experiments' subset (5,170 train / 1,017 test), from the official CIFAR-10
    # (downloads 163 MB)
    python experiments/cifar10_data.py subset --out data/cifar10_subset.npz
    # the test suite's fixture (800 train / 200 test), drawn from the subset
    python experiments/cifar10_data.py tiny --subset ../shared/data/cifar10_subset.npz \\
        --out tests/data/cifar10_tiny.npz

``subset``: the first 1,034 records of each official training batch (``data_batch_1`` ...
``data_batch_5``, in order) and the first 1,017 of ``test_batch``, with their official labels,
in the ``keras.datasets.cifar10.load_data()`` layout (that loader keeps the batches' order).
The per-batch count is read off the shared file (5,170 = 5 x 1,034; its first labels are the
official batches' first labels); the arrays are checked against the SHA-256 of the shared
file's arrays below, so a different source or count fails loudly instead of giving other numbers.

``tiny``: in the subset's order, the first 80 training images of each class and the first 20
test images of each class (800 + 200 images, 3 MB). Its SHA-256 is printed and recorded in
``tests/data/README.md``.
"""

import argparse
import hashlib
import os
import sys
import tempfile

import numpy as np

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
RECORDS_PER_TRAIN_BATCH = 1034  # of each of the five official training batches of 10,000
TEST_RECORDS = 1017
# SHA-256 of x_train, y_train, x_test, y_test (C order; labels int64) of the shared subset
SUBSET_SHA256 = "b2903a2dc7b24b45b9002722a3d124fb420960c5171514796d3c494e1f2cdf39"
TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS = 80, 20


def arrays_sha256(x_train, y_train, x_test, y_test):
    digest = hashlib.sha256()
    for a, dtype in ((x_train, np.uint8), (y_train, np.int64), (x_test, np.uint8),
                     (y_test, np.int64)):
        digest.update(np.ascontiguousarray(a, dtype=dtype).tobytes())
    return digest.hexdigest()


def save_npz(path, **arrays):
    """Write ``path`` atomically (a temporary file beside it, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make it private to its writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def subset_from_official(x_train, y_train, x_test, y_test):
    """The subset's arrays from the official CIFAR-10 (``keras.datasets`` order and layout)."""
    y_train, y_test = np.ravel(y_train).astype(np.int64), np.ravel(y_test).astype(np.int64)
    rows = np.concatenate([np.arange(RECORDS_PER_TRAIN_BATCH) + 10_000 * b for b in range(5)])
    return x_train[rows], y_train[rows], x_test[:TEST_RECORDS], y_test[:TEST_RECORDS]


def tiny_from_subset(x_train, y_train, x_test, y_test):
    """The first ``TINY_*_PER_CLASS`` images of each class of each split, in the subset's order."""
    def first_per_class(y, n):
        keep = np.zeros(len(y), bool)
        for c in range(len(CLASS_NAMES)):
            keep[np.flatnonzero(y == c)[:n]] = True
        return keep

    train = first_per_class(y_train, TINY_TRAIN_PER_CLASS)
    test = first_per_class(y_test, TINY_TEST_PER_CLASS)
    return x_train[train], y_train[train], x_test[test], y_test[test]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("subset", help="the experiments' subset from the official CIFAR-10")
    s.add_argument("--out", required=True)
    t = sub.add_parser("tiny", help="the test suite's fixture from the subset")
    t.add_argument("--subset", required=True)
    t.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.what == "subset":
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        arrays = subset_from_official(x_train, y_train, x_test, y_test)
        got = arrays_sha256(*arrays)
        if got != SUBSET_SHA256:
            sys.exit(f"the rebuilt subset's SHA-256 is {got}, not {SUBSET_SHA256}: the source "
                     "is not the official CIFAR-10 in keras.datasets' order")
    else:
        with np.load(args.subset) as d:
            subset = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
        if arrays_sha256(*subset) != SUBSET_SHA256:
            sys.exit(f"{args.subset} is not the project's CIFAR-10 subset (SHA-256 differs)")
        arrays = tiny_from_subset(*subset)
    names = ("x_train", "y_train", "x_test", "y_test")
    save_npz(args.out, **dict(zip(names, arrays)), class_names=np.array(CLASS_NAMES))
    sizes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
    print(f"{args.out}: {sizes}; arrays SHA-256 {arrays_sha256(*arrays)}")


if __name__ == "__main__":
    main()
