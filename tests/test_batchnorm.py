"""BatchNorm momentum and precise statistics, against plain NumPy."""

import keras
import numpy as np
import pytest
from tolerances import F32

from keras_supcon.models import build_classifier, build_encoder, freeze
from keras_supcon.models.batchnorm import (
    batchnorm_layers,
    precise_batchnorm,
    set_batchnorm_momentum,
)


def _batches(sizes=(8, 8, 5), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 3.0, 0.5], size=(n, 3))
            .astype("float32") for n in sizes]


def _bn_model():
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    return keras.Model(inputs, bn(inputs)), bn


def _numpy_statistics(batches):
    """Per-channel mean of the batch means and of the (biased) batch variances, in float64."""
    mean = np.mean([b.astype("float64").mean(axis=0) for b in batches], axis=0)
    var = np.mean([b.astype("float64").var(axis=0) for b in batches], axis=0)
    return mean, var


@pytest.mark.parametrize("sizes", [(8, 8, 5), (1, 2), (16,)])
def test_precise_statistics_are_the_average_of_batch_statistics(sizes):
    model, bn = _bn_model()
    batches = _batches(sizes)
    assert precise_batchnorm(model, [(b, np.zeros(len(b))) for b in batches]) == len(sizes)
    mean, var = _numpy_statistics(batches)
    # float32 running averages of O(1) statistics against float64: F32 (variances: the
    # squares double the relative round-off, and the variance of a few samples is noisier)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean, **F32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), var, rtol=1e-4,
                               atol=1e-6)
    assert bn.momentum == 0.99  # restored


def test_precise_statistics_of_a_frozen_model_and_a_batch_limit():
    """A frozen BatchNorm ignores training=True; the recalibration must not."""
    model, bn = _bn_model()
    model.trainable = False
    batches = _batches((8, 8, 5, 6))
    weights = [w.copy() for w in model.get_weights()]
    assert precise_batchnorm(model, iter(batches), max_batches=2) == 2
    mean, var = _numpy_statistics(batches[:2])
    # float32 running averages of O(1) statistics against float64: F32 (variances: the
    # squares double the relative round-off, and the variance of a few samples is noisier)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean, **F32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), var, rtol=1e-4,
                               atol=1e-6)
    assert not bn.trainable and not model.trainable
    np.testing.assert_array_equal(model.get_weights()[0], weights[0])  # gamma untouched
    np.testing.assert_array_equal(model.get_weights()[1], weights[1])  # beta untouched


def test_the_compiled_pass_is_reused_and_follows_freezing():
    """The pass compiled for a model serves its later calls (the jobs recompute before
    every validation pass) with their own batches, and is rebuilt when freezing the model
    changes how its variables are split (JAX)."""
    model, bn = _bn_model()
    for frozen, seed in ((False, 1), (False, 2), (True, 3)):
        model.trainable = not frozen
        batches = _batches((8, 5), seed=seed)
        assert precise_batchnorm(model, batches) == 2
        mean, var = _numpy_statistics(batches)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean, **F32)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), var,
                                   rtol=1e-4, atol=1e-6)
        assert bn.trainable == (not frozen)


def test_precise_statistics_without_batches_keep_the_old_ones():
    model, bn = _bn_model()
    bn.moving_mean.assign([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least one batch"):
        precise_batchnorm(model, [])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_variance), [1.0] * 3)


def test_precise_statistics_in_an_encoder_match_numpy_at_the_first_layer():
    """In a real encoder: the stem BatchNorm's statistics are those of its input
    (the stem convolution's output) over the batches, computed in NumPy."""
    encoder = freeze(build_encoder("small_resnet", 8))
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 255, (n, 8, 8, 3)).astype("float32") for n in (6, 4)]
    precise_batchnorm(encoder, batches)
    backbone = encoder.get_layer("small_resnet")
    bn = backbone.get_layer("stem_bn")
    conv_out = keras.Model(backbone.input, bn.input)
    pre = encoder.get_layer("preprocess")
    outs = [np.asarray(conv_out(pre(b)), dtype="float64").reshape(-1, bn.moving_mean.shape[0])
            for b in batches]
    mean, var = _numpy_statistics(outs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), var,
                               rtol=1e-3, atol=1e-5)


def test_momentum_reaches_every_batchnorm_and_survives_saving(tmp_path):
    encoder = build_encoder("resnet50", 32)  # keras.applications layers too
    classifier = build_classifier(encoder, 3)
    layers = batchnorm_layers(classifier)
    assert len(layers) == 53 and {layer.momentum for layer in layers} == {0.99}
    set_batchnorm_momentum(classifier, 0.9)
    assert {layer.momentum for layer in layers} == {0.9}
    classifier.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras")
    assert {layer.momentum for layer in batchnorm_layers(loaded)} == {0.9}
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        set_batchnorm_momentum(classifier, 1.0)
