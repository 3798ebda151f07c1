import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from roundtrip import assert_layer_round_trip

from keras_supcon.data import (
    AugmentPolicy,
    contrastive_batches,
    from_arrays,
    load_dataset,
    supervised_batches,
)
from keras_supcon.data.augment import (
    CONTRASTIVE_POLICY,
    POLICIES,
    augment_batch,
    default_policy_name,
    get_policy,
    make_views,
)
from keras_supcon.data.pipeline import resize_images
from keras_supcon.errors import ConfigError, DataError, OfflineError


def _first(ds):
    return next(iter(ds))


def test_digits_is_split_into_disjoint_train_val_test():
    splits = load_dataset("digits", val_fraction=0.1, seed=3)
    assert splits.sizes == {"train": 1293, "val": 144, "test": 360}
    assert splits.num_classes == 10
    images = {k: np.stack([x.numpy() for x, _ in getattr(splits, k)]) for k in splits.sizes}
    assert images["train"].dtype == np.uint8 and images["train"].shape[1:] == (8, 8, 1)
    assert {k: len(v) for k, v in images.items()} == splits.sizes
    flat = {k: {v.tobytes() for v in images[k]} for k in images}
    # sklearn's digits holds a few duplicate images, so compare counts, not identity
    assert len(flat["test"] & flat["train"]) < 10
    # the test split does not depend on the seed; validation does
    other = load_dataset("digits", seed=4)
    assert [int(y) for _, y in other.test] == [int(y) for _, y in splits.test]
    assert [int(y) for _, y in other.val] != [int(y) for _, y in splits.val]


def test_cifar_npz(cifar_tiny):
    splits = load_dataset(str(cifar_tiny))
    assert splits.sizes == {"train": 720, "val": 80, "test": 200}
    assert splits.class_names[:3] == ["airplane", "automobile", "bird"]
    x, y = _first(splits.test)
    assert x.shape == (32, 32, 3) and x.dtype == tf.uint8


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_errors(tmp_path):
    x = np.zeros((10, 8, 8, 3), np.uint8)
    y = np.arange(10) % 2
    with pytest.raises(DataError, match="missing key.*x_test"):
        load_dataset(_write_npz(tmp_path / "a.npz", x_train=x, y_train=y, y_test=y))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_dataset(_write_npz(tmp_path / "b.npz", x_train=x, y_train=y[:9], x_test=x, y_test=y))
    with pytest.raises(DataError, match=r"outside \[0, 2\)"):
        load_dataset(_write_npz(tmp_path / "c.npz", x_train=x, y_train=y + 1, x_test=x, y_test=y,
                                class_names=np.array(["a", "b"])))
    with pytest.raises(DataError, match="outside"):
        load_dataset(_write_npz(tmp_path / "d.npz", x_train=x, y_train=y - 1, x_test=x, y_test=y))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    (tmp_path / "e.npz").write_text("garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(str(tmp_path / "e.npz"))
    with pytest.raises(DataError, match=r"images must be"):
        from_arrays(np.zeros((4, 8, 8, 2)), [0, 1, 0, 1], x, y)


def _make_folder(root, classes, per_class, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size, size + i % 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_image_folder_with_unreadable_files(tmp_path, caplog):
    _make_folder(tmp_path / "imgs", ["cat", "dog", "eel"], 10)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(str(tmp_path / "imgs"), val_fraction=0.2)
    assert "skipped 1 unreadable image file" in caplog.text
    assert splits.class_names == ["cat", "dog", "eel"]
    assert sum(splits.sizes.values()) == 30 and splits.sizes["test"] == 6
    images, labels = _first(supervised_batches(splits.train, 16, 64))
    assert images.shape == (splits.sizes["train"], 16, 16, 3)
    assert set(labels.numpy()) == {0, 1, 2}


def test_image_folder_with_train_and_test_parts(tmp_path):
    _make_folder(tmp_path / "d" / "train", ["a", "b"], 6)
    _make_folder(tmp_path / "d" / "test", ["a", "b"], 2)
    splits = load_dataset(str(tmp_path / "d"), val_fraction=0.25)
    assert splits.sizes == {"train": 9, "val": 3, "test": 4}


def test_empty_or_unreadable_folders_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "1.png").write_text("nope")
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(str(tmp_path / "bad"))


def test_tfds_source_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        splits = load_dataset("cifar10", val_fraction=0.2)
        # the mock has no metadata: label names are "0".."9", each split 20 examples
        assert splits.num_classes == 10 and len(splits.class_names) == 10
        assert splits.sizes == {"train": 20, "val": 20, "test": 20}
        x, y = _first(contrastive_batches(splits.train, 32, 4))
        assert x.shape == (4, 2, 32, 32, 3)


def test_tfds_unknown_name_and_offline(monkeypatch):
    import tensorflow_datasets as tfds

    with pytest.raises(DataError, match="unknown dataset 'no_such_set'"):
        load_dataset("no_such_set")

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(OfflineError, match="could not download.*--dataset digits"):
        load_dataset("cifar10")


def test_contrastive_batches_give_two_different_views_in_range():
    splits = load_dataset("digits")
    views, labels = _first(contrastive_batches(splits.train, 24, 16, seed=0))
    assert views.shape == (16, 2, 24, 24, 3) and labels.shape == (16,)
    v = views.numpy()
    assert v.min() >= 0 and v.max() <= 255
    assert np.abs(v[:, 0] - v[:, 1]).mean() > 1.0
    with pytest.raises(ConfigError, match="batch size >= 2"):
        contrastive_batches(splits.train, 24, 1)
    with pytest.raises(ConfigError, match="larger than the 10 training images"):
        contrastive_batches(splits.train, 24, 16, num_examples=10)


@pytest.mark.parametrize("cache", [False, True])
def test_shuffled_batches_are_those_of_resizing_first(cache):
    """The pipeline shuffles raw images before resizing them (no cache): the batches,
    pass after pass, are those of the plain order resize -> shuffle, to the last bit."""
    splits = load_dataset("digits")
    n = 300
    train = splits.train.take(n)
    reference = resize_images(train, 20).shuffle(n, seed=3, reshuffle_each_iteration=True)
    reference = reference.batch(32)
    got = supervised_batches(train, 20, 32, shuffle=True, seed=3, cache=cache, num_examples=n)
    for _ in range(2):  # the second pass reshuffles
        pairs = list(zip(got, reference, strict=True))
        assert len(pairs) == 10
        for (x, y), (x_ref, y_ref) in pairs:
            np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
            np.testing.assert_array_equal(x.numpy(), x_ref.numpy())


def test_augmentation_pieces():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (6, 10, 10, 3)), tf.float32)
    identity = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                             jitter_prob=0.0, grayscale_prob=0.0)
    np.testing.assert_allclose(augment_batch(images, identity).numpy(), images.numpy(),
                               atol=1e-3)
    gray = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                         jitter_prob=0.0, grayscale_prob=1.0)
    out = augment_batch(images, gray).numpy()
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-4)
    flip = AugmentPolicy(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True,
                         jitter_prob=0.0, grayscale_prob=0.0)
    out = augment_batch(images, flip).numpy()
    for o, i in zip(out, images.numpy()):
        assert np.allclose(o, i, atol=1e-3) or np.allclose(o, i[:, ::-1], atol=1e-3)


def test_named_policies_and_source_defaults():
    assert set(POLICIES) >= {"simclr", "digits", "weak", "none"}
    assert default_policy_name("digits") == "digits"
    assert default_policy_name("cifar10_subset") == default_policy_name("cifar10") == "simclr"
    digits = get_policy("digits")
    assert not digits.flip and digits.crop_scale[0] >= 0.5 and not digits.saturation
    assert get_policy("simclr") == CONTRASTIVE_POLICY and get_policy("simclr").flip
    # the classifier stages' form: the same crops and flips, no colour changes
    weak = get_policy("simclr").weak()
    assert weak.crop_scale == (0.5, 1.0) and weak.flip and weak.jitter_prob == 0
    assert digits.weak().crop_scale == digits.crop_scale and not digits.weak().flip
    # overrides
    custom = get_policy("simclr", crop_scale=0.3, flip=False, jitter=0.2)
    assert custom.crop_scale == (0.3, 1.0) and not custom.flip
    assert (custom.brightness, custom.saturation, custom.hue) == (0.2, 0.2, 0.05)
    assert get_policy("simclr", jitter=0).jitter_prob == 0
    assert get_policy("none").is_identity
    with pytest.raises(ConfigError, match="unknown augmentation policy 'photo'; choose one of"):
        get_policy("photo")
    with pytest.raises(ConfigError, match=r"crop scale must be in \(0, 1\]; got 0"):
        get_policy("digits", crop_scale=0)
    with pytest.raises(ConfigError, match="colour-jitter strength must be >= 0"):
        get_policy("digits", jitter=-1)


def test_digits_policy_never_mirrors_and_none_is_identity():
    # an image whose left half is bright: a mirror would have a bright right half
    images = np.zeros((64, 12, 12, 3), np.float32)
    images[:, :, :6] = 200.0
    out = augment_batch(tf.constant(images), get_policy("digits")).numpy()
    assert np.all(out[:, :, :4].mean(axis=(1, 2, 3)) > out[:, :, -4:].mean(axis=(1, 2, 3)))
    flipped = augment_batch(tf.constant(images), get_policy("simclr", jitter=0)).numpy()
    assert np.any(flipped[:, :, :4].mean(axis=(1, 2, 3)) < flipped[:, :, -4:].mean(axis=(1, 2, 3)))
    np.testing.assert_array_equal(augment_batch(tf.constant(images), POLICIES["none"]), images)


def test_source_defaults_look_through_file_and_tfds_config_names():
    assert default_policy_name("mnist.npz") == default_policy_name("emnist/letters") == "digits"
    assert default_policy_name("cifar10_subset.npz") == "simclr"


# ------------------------------------------------------- the augmentation layer
def test_augmentation_ops_are_seedable():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (6, 12, 12, 3)), tf.float32)
    policy = get_policy("simclr")
    a = augment_batch(images, policy, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(a, augment_batch(images, policy, seed=tf.constant([1, 2])))
    assert not np.array_equal(a, augment_batch(images, policy, seed=tf.constant([1, 3])))
    views = make_views(images, 3, policy, seed=tf.constant([4, 5])).numpy()
    assert views.shape == (6, 3, 12, 12, 3) and not np.array_equal(views[:, 0], views[:, 1])


def test_augment_layer_in_a_model_reloads_with_the_same_views(tmp_path):
    """A .keras file of a contrastive model holding the augmentation layer gives, for a
    fixed seed, the outputs of the model it was saved from when that was fresh."""
    from keras_supcon.data import RandomAugment
    from keras_supcon.models import build_contrastive_model, build_encoder, build_projection_head

    images = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 16, 8)
    inputs = keras.Input((16, 16, 3))
    views = RandomAugment("simclr", views=2, seed=7, name="augment")(inputs)
    model = keras.Model(inputs, build_contrastive_model(encoder, head, views=2)(views))
    fresh = model(images, training=True).numpy()
    assert fresh.shape == (4, 2, 8)
    assert not np.array_equal(fresh, model(images, training=True).numpy())  # a new draw
    model.save(tmp_path / "supcon.keras")
    loaded = keras.models.load_model(tmp_path / "supcon.keras")
    np.testing.assert_array_equal(loaded(images, training=True).numpy(), fresh)
    layer = assert_layer_round_trip(loaded.get_layer("augment"))
    assert (layer.policy, layer.views, layer.seed) == (get_policy("simclr"), 2, 7)
    # inference: no augmentation, the same two views. They sit at two positions of one
    # batch, which float32 kernels may vectorise differently (3.7e-8 apart on an AVX2
    # CPU): unit vectors, so an absolute floor of ~10 float32 epsilons of their norm.
    out = loaded(images, training=False).numpy()
    np.testing.assert_allclose(out[:, 0], out[:, 1], rtol=1e-5, atol=1e-6)


def test_augment_layer_in_tf_data_and_its_errors():
    from keras_supcon.data import RandomAugment

    images = np.random.default_rng(2).uniform(0, 255, (8, 12, 12, 3)).astype("float32")

    def batches(seed):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
        return [b.numpy() for b in ds.map(RandomAugment("digits", seed=seed))]

    first, again, other = batches(3), batches(3), batches(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[0], first[1])
    assert first[0].shape == (4, 12, 12, 3)
    np.testing.assert_array_equal(RandomAugment("none")(images), images)
    with pytest.raises(ConfigError, match="augmentation policy"):
        RandomAugment("sepia")
    with pytest.raises(ConfigError, match="views"):
        RandomAugment("simclr", views=0)
