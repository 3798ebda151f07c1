"""Data sources -> train / validation / test splits as ``tf.data`` datasets.

A source is named by one string (the CLI's ``--dataset``):

- ``digits``: the 8x8 handwritten digits bundled with scikit-learn (1,797
  images, 10 classes; offline). 20% is held out as the test split (fixed seed).
- ``path/to/file.npz`` with ``x_train, y_train, x_test, y_test`` (and optional
  ``class_names``), in the ``keras.datasets`` layout.
- ``path/to/folder``: one sub-folder per class (``folder/<class>/<image>``), or
  ``folder/train/<class>/...`` and ``folder/test/<class>/...``. Without a
  ``test`` part, 20% of each class is held out as the test split (fixed seed).
- any other string: a TFDS image-classification data set (``cifar10``,
  ``cifar100``, ``stl10``, ...), read from ``data_dir`` or downloaded.

Every split yields ``(image, label)`` pairs: ``uint8`` images ``[H, W, C]``
(``C`` 1 or 3) and ``int64`` labels in ``[0, num_classes)``. The validation
split is carved out of the training data (stratified where possible) and is
used for model selection and early stopping; the test split only for final metrics.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from keras_supcon.errors import DataError, OfflineError

log = logging.getLogger(__name__)

TEST_SPLIT_SEED = 0  # the carved-out test split never depends on the run's seed
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
OFFLINE_ALTERNATIVES = (
    "without network use --dataset digits, a .npz file "
    "(e.g. ../shared/data/cifar10_subset.npz), a folder of class sub-folders, "
    "or --data-dir with a TFDS data directory prepared beforehand")


@dataclass
class DataSplits:
    """Train / validation / test ``tf.data`` datasets of ``(uint8 image, int64 label)``."""

    name: str
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: list
    sizes: dict = field(default_factory=dict)  # {"train": n, "val": n, "test": n}

    def describe(self):
        return (f"{self.name}: {self.num_classes} classes, " +
                ", ".join(f"{k} {v}" for k, v in self.sizes.items()))


def load_dataset(spec="digits", *, data_dir=None, val_fraction=0.1, seed=0):
    """Load data source ``spec`` (see the module docstring) as :class:`DataSplits`."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1); got {val_fraction}")
    spec = os.fspath(spec)
    if spec == "digits":
        return _digits(val_fraction, seed)
    if spec.endswith(".npz"):
        return load_npz(spec, val_fraction=val_fraction, seed=seed)
    if os.path.isdir(spec):
        return _from_folder(spec, val_fraction, seed)
    if os.sep in spec or os.path.splitext(spec)[1]:
        raise DataError(f"dataset {spec!r}: no such file or folder")
    return _from_tfds(spec, data_dir, val_fraction)


# ---------------------------------------------------------------- arrays
def _digits(val_fraction, seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target,
        random_state=TEST_SPLIT_SEED)
    names = [str(c) for c in range(10)]
    return from_arrays(x_train, y_train, x_test, y_test, names, val_fraction=val_fraction,
                       seed=seed, name="digits")


def load_npz(path, *, val_fraction=0.1, seed=0):
    """A ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``)."""
    if not os.path.isfile(path):
        raise DataError(f"dataset {path!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)} "
                                "(need x_train, y_train, x_test, y_test)")
            arrays = {k: data[k] for k in data.files}
    except DataError:
        raise
    except Exception as exc:  # zipfile / pickle / OS errors
        raise DataError(f"{path}: cannot read .npz ({exc})") from exc
    names = arrays.get("class_names")
    names = [str(n) for n in names] if names is not None else None
    return from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                       names, val_fraction=val_fraction, seed=seed,
                       name=os.path.basename(path))


def _check_images(x, where):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3]; "
                        f"got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{where}: images must be numeric; got dtype {x.dtype}")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: pixel values must be in [0, 255]; got [{lo}, {hi}]")
        x = np.round(x).astype(np.uint8) if hi > 1.0 else np.round(x * 255).astype(np.uint8)
    return x


def _check_labels(y, n, num_classes, where):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a vector of class indices; got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{where}: {n} images but {len(y)} labels")
    if len(y) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{where}: labels must be integers")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} label(s) outside [0, {num_classes}), "
                        f"e.g. {int(y[bad][0])}")
    return y


def split_indices(labels, fraction, seed):
    """Stratified (where every class has 2+ items) split of ``range(len(labels))``."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    idx = np.arange(len(labels))
    try:
        return train_test_split(idx, test_size=fraction, stratify=stratify, random_state=seed)
    except ValueError:  # too few items per class for a stratified split
        return train_test_split(idx, test_size=fraction, random_state=seed)


def from_arrays(x_train, y_train, x_test, y_test, class_names=None, *, val_fraction=0.1,
                seed=0, name="arrays"):
    """:class:`DataSplits` from in-memory arrays (validation carved from the training part)."""
    x_train = _check_images(x_train, f"{name} x_train")
    x_test = _check_images(x_test, f"{name} x_test")
    if len(x_train) < 2:
        raise DataError(f"{name}: need at least 2 training images; got {len(x_train)}")
    if len(x_test) == 0:
        raise DataError(f"{name}: the test split is empty")
    if class_names is None:
        num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
        if num_classes < 1:
            raise DataError(f"{name}: labels must be class indices >= 0")
        class_names = [str(i) for i in range(num_classes)]
    num_classes = len(class_names)
    y_train = _check_labels(y_train, len(x_train), num_classes, f"{name} y_train")
    y_test = _check_labels(y_test, len(x_test), num_classes, f"{name} y_test")
    train_idx, val_idx = split_indices(y_train, val_fraction, seed)

    def ds(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y))

    return DataSplits(
        name=name,
        train=ds(x_train[train_idx], y_train[train_idx]),
        val=ds(x_train[val_idx], y_train[val_idx]),
        test=ds(x_test, y_test),
        num_classes=num_classes,
        class_names=list(class_names),
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(x_test)},
    )


# ---------------------------------------------------------------- folders
def _list_class_folder(root):
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files, labels, unreadable = [], [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        for fname in sorted(os.listdir(folder)):
            path = os.path.join(folder, fname)
            if not fname.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
                continue
            if _readable_image(path):
                files.append(path)
                labels.append(label)
            else:
                unreadable.append(path)
    return classes, files, np.asarray(labels, dtype=np.int64), unreadable


def _readable_image(path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for broken files
        return False


def _from_folder(root, val_fraction, seed):
    train_root, test_root = os.path.join(root, "train"), os.path.join(root, "test")
    has_parts = os.path.isdir(train_root) and os.path.isdir(test_root)
    classes, files, labels, unreadable = _list_class_folder(train_root if has_parts else root)
    if has_parts:
        test_classes, test_files, test_labels, bad_test = _list_class_folder(test_root)
        if test_classes != classes:
            raise DataError(f"{root}: train/ and test/ have different class folders")
        unreadable += bad_test
    if unreadable:
        log.warning("%s: skipped %d unreadable image file(s), e.g. %s",
                    root, len(unreadable), unreadable[0])
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if len(files) == 0:
        raise DataError(f"{root}: no readable images in {len(classes)} class folder(s) "
                        f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
    files = np.asarray(files)
    if not has_parts:
        if len(files) < 3:
            raise DataError(f"{root}: need at least 3 images to carve out test and validation")
        rest, test_idx = split_indices(labels, 0.2, TEST_SPLIT_SEED)
        test_files, test_labels = files[test_idx], labels[test_idx]
        files, labels = files[rest], labels[rest]
    test_files = np.asarray(test_files)
    if len(test_files) == 0:
        raise DataError(f"{root}: the test split has no readable images")
    train_idx, val_idx = split_indices(labels, val_fraction, seed)

    def ds(paths, y):
        return tf.data.Dataset.from_tensor_slices((paths, y)).map(
            _decode_file, num_parallel_calls=tf.data.AUTOTUNE)

    return DataSplits(
        name=os.path.basename(os.path.normpath(root)),
        train=ds(files[train_idx], labels[train_idx]),
        val=ds(files[val_idx], labels[val_idx]),
        test=ds(test_files, np.asarray(test_labels)),
        num_classes=len(classes),
        class_names=classes,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_files)},
    )


def _decode_file(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return image, label


# ---------------------------------------------------------------- TFDS
def _from_tfds(name, data_dir, val_fraction):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}: not 'digits', a .npz file, a folder, or a TFDS "
            "data set name (see tfds.list_builders())") from None
    try:
        builder.download_and_prepare()
    except Exception as exc:  # DownloadError, ConnectionError, OSError, ... depending on stage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OfflineError(
            f"TFDS could not download or prepare {name!r} ({type(exc).__name__}: {first}); "
            + OFFLINE_ALTERNATIVES) from exc
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"TFDS data set {name!r} has no 'image' and 'label' features")
    splits = builder.info.splits
    if splits and ("train" not in splits or "test" not in splits):
        raise DataError(f"TFDS data set {name!r} needs 'train' and 'test' splits; "
                        f"has {', '.join(splits)}")
    keep = int(round(100 * (1 - val_fraction)))
    split_names = {"train": f"train[:{keep}%]", "val": f"train[{keep}%:]", "test": "test"}
    datasets = {k: builder.as_dataset(split=s, as_supervised=True, shuffle_files=False)
                for k, s in split_names.items()}
    names = list(features["label"].names)
    return DataSplits(
        name=name,
        train=datasets["train"], val=datasets["val"], test=datasets["test"],
        num_classes=len(names), class_names=names,
        sizes={k: _count(ds) for k, ds in datasets.items()},
    )


def load_unlabelled_split(spec, *, data_dir=None):
    """The unlabelled split of a TFDS data set (STL-10's ``unlabelled``) as
    ``(uint8 image, -1)`` pairs, or ``None`` if ``spec`` has no such split."""
    spec = os.fspath(spec)
    if spec == "digits" or spec.endswith(".npz") or os.path.isdir(spec):
        return None
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec, data_dir=data_dir)
    splits = builder.info.splits
    if splits and "unlabelled" not in splits:
        return None
    ds = builder.as_dataset(split="unlabelled", shuffle_files=False)
    return ds.map(lambda ex: (ex["image"], tf.constant(-1, tf.int64)))


def _count(ds):
    """Number of elements of ``ds`` (its cardinality, or one pass if that is unknown)."""
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(0, lambda count, _: count + 1))
