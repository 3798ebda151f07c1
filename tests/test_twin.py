"""The tf_keras twin: same architecture, same weights, same outputs, for every backbone."""

import keras
import numpy as np
import pytest
import tf_keras
from checks import batchnorm_momenta

from keras_supcon.compression.twin import classifier_architecture, to_keras, to_tf_keras
from keras_supcon.errors import ConfigError
from keras_supcon.models import (
    BACKBONES,
    build_classifier,
    build_encoder,
    set_batchnorm_momentum,
)


def _randomised(model, seed=0):
    """Random weights everywhere, BatchNorm statistics included (variances > 0), so a
    transfer that swaps or drops any tensor changes the outputs."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.path:
            weights.append(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif "gamma" in w.path:
            weights.append(rng.uniform(0.8, 1.2, shape).astype("float32"))
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            weights.append((rng.standard_normal(shape) * 0.5 / np.sqrt(fan_in))
                           .astype("float32"))
    model.set_weights(weights)
    return model


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_twin_reproduces_the_keras3_classifier(backbone):
    size = BACKBONES[backbone].min_size
    classifier = _randomised(build_classifier(build_encoder(backbone, size), 7))
    twin = to_tf_keras(classifier)
    assert isinstance(twin, tf_keras.Model)
    assert [w.shape for w in twin.weights] == [tuple(w.shape) for w in classifier.weights]
    images = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3)).astype("float32")
    encoder = f"encoder_{backbone}"
    features = np.asarray(classifier.get_layer(encoder)(images))
    twin_features = twin.get_layer(encoder)(images).numpy()
    assert features.std() > 1e-3  # the comparison is not between constants
    np.testing.assert_allclose(twin_features, features, rtol=1e-4, atol=1e-5)
    outputs = np.asarray(classifier(images))
    np.testing.assert_allclose(twin(images).numpy(), outputs, rtol=1e-4, atol=1e-6)
    back = to_keras(twin)
    for a, b in zip(back.get_weights(), classifier.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(back(images)), outputs)


def test_architecture_is_read_from_the_classifier():
    classifier = build_classifier(build_encoder("small_resnet", 12), 3, dropout=0.25)
    assert classifier_architecture(classifier) == ("small_resnet", 12, 3, 0.25, None, 0.0,
                                                   0.99)  # Keras' default momentum


def test_twin_keeps_the_runs_batchnorm_momentum_and_l2():
    """A fix to how the run builds its classifier (BatchNorm momentum, L2) reaches the
    twin tfmot fine-tunes and the Keras 3 model it gives back."""
    encoder = set_batchnorm_momentum(build_encoder("small_resnet", 12), 0.9)
    classifier = build_classifier(encoder, 3, l2=1e-3)
    twin = to_tf_keras(classifier)
    for model in (twin, to_keras(twin)):
        assert batchnorm_momenta(model) == {0.9}
        assert model.get_layer("probabilities").kernel_regularizer.get_config()["l2"] == \
            pytest.approx(1e-3)


def test_twin_of_an_mlp_probe_classifier():
    """fine_tune_nn's classifier (a hidden layer before the softmax) has a twin too."""
    classifier = _randomised(build_classifier(build_encoder("small_resnet", 12), 3, hidden=16,
                                              l2=1e-3))
    assert classifier_architecture(classifier)[:6] == ("small_resnet", 12, 3, 0.0, 16,
                                                       pytest.approx(1e-3))
    twin = to_tf_keras(classifier)
    images = np.random.default_rng(2).uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(twin(images).numpy(), np.asarray(classifier(images)),
                               rtol=1e-4, atol=1e-6)


def test_a_foreign_model_is_refused():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ConfigError, match="not a keras_supcon classifier"):
        to_tf_keras(model)
