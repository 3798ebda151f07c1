import numpy as np
import pytest
import tf_keras

import keras
from keras_supcon.errors import ConfigError, OfflineError
from keras_supcon.models import (
    BACKBONES,
    ImagePreprocess,
    build_classifier,
    build_contrastive_model,
    build_encoder,
    build_projection_head,
    freeze,
)

APPLICATION_PREPROCESS = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "densenet169": keras.applications.densenet.preprocess_input,
    "densenet201": keras.applications.densenet.preprocess_input,
    "inceptionv3": keras.applications.inception_v3.preprocess_input,
    "inceptionresnetv2": keras.applications.inception_resnet_v2.preprocess_input,
}


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", sorted(APPLICATION_PREPROCESS))
def test_application_encoder_builds_with_its_preprocessing(name):
    spec = BACKBONES[name]
    encoder = build_encoder(name)
    assert encoder.input_shape == (None, spec.default_size, spec.default_size, 3)
    x = _images(2, spec.default_size)
    got = np.asarray(encoder.get_layer("preprocess")(x))
    expected = APPLICATION_PREPROCESS[name](x.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,too_small", [("inceptionv3", 74), ("inceptionresnetv2", 32),
                                             ("resnet50", 31), ("small_resnet", 7)])
def test_image_size_below_minimum_is_refused(name, too_small):
    with pytest.raises(ConfigError, match=f"minimum of {name}"):
        build_encoder(name, too_small)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg99'.*densenet201"):
        build_encoder("vgg99")


def test_model_shapes_and_unit_norm_embeddings():
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 32, 8)
    model = build_contrastive_model(encoder, head, views=3)
    z = np.asarray(model(np.stack([_images(4, 16, s) for s in range(3)], axis=1)))
    assert z.shape == (4, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    probs = np.asarray(build_classifier(encoder, 5)(_images(4, 16)))
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_contrastive_model_encodes_each_view_like_the_encoder():
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 16, 4)
    model = build_contrastive_model(encoder, head)
    a, b = _images(3, 16, 1), _images(3, 16, 2)
    z = np.asarray(model(np.stack([a, b], axis=1), training=False))
    np.testing.assert_allclose(z[:, 1], np.asarray(head(encoder(b))), rtol=1e-5, atol=1e-6)


def test_frozen_encoder_runs_batchnorm_in_inference_mode():
    encoder = build_encoder("small_resnet", 16)
    classifier = build_classifier(freeze(encoder), 3)
    x = _images(8, 16)
    np.testing.assert_allclose(np.asarray(classifier(x, training=True)),
                               np.asarray(classifier(x, training=False)), rtol=1e-6)
    trainable = {w.path for w in classifier.trainable_weights}
    assert all("probabilities" in p for p in trainable) and len(trainable) == 2


def test_models_round_trip_through_keras_files(tmp_path):
    encoder = build_encoder("small_resnet", 16)
    classifier = build_classifier(encoder, 4)
    model = build_contrastive_model(encoder, build_projection_head(encoder.output_shape[-1]))
    x = _images(2, 16)
    for m, inp in [(classifier, x), (model, np.stack([x, x], axis=1))]:
        path = tmp_path / f"{m.name}.keras"
        m.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(np.asarray(loaded(inp)), np.asarray(m(inp)), rtol=1e-6)
    assert isinstance(keras.models.load_model(tmp_path / "classifier.keras")
                      .get_layer("encoder_small_resnet").get_layer("preprocess"), ImagePreprocess)


def test_tf_keras_twin_from_the_same_builder_matches_exactly():
    x = _images(4, 16)
    classifier = build_classifier(build_encoder("small_resnet", 16), 5)
    twin = build_classifier(build_encoder("small_resnet", 16, K=tf_keras), 5, K=tf_keras)
    assert [w.shape for w in twin.weights] == [tuple(w.shape) for w in classifier.weights]
    twin.set_weights(classifier.get_weights())
    np.testing.assert_array_equal(twin.predict(x, verbose=0), classifier.predict(x, verbose=0))


def test_weights_from_a_local_file(tmp_path):
    source = build_encoder("small_resnet", 16)
    backbone = source.get_layer("small_resnet")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    loaded = build_encoder("small_resnet", 16, weights=str(path))
    x = _images(2, 16)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), rtol=1e-6)
    with pytest.raises(ConfigError, match="weights file not found"):
        build_encoder("small_resnet", 16, weights=str(tmp_path / "missing.h5"))
    bad = tmp_path / "bad.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ConfigError, match="could not load small_resnet weights"):
        build_encoder("small_resnet", 16, weights=str(bad))


def test_imagenet_download_failure_is_an_offline_error(monkeypatch):
    from keras.src.applications import resnet

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(resnet.file_utils, "get_file", no_network)
    with pytest.raises(OfflineError, match="ImageNet weights for resnet50 .*--weights none"):
        build_encoder("resnet50", weights="imagenet")
    with pytest.raises(ConfigError, match="small_resnet has no ImageNet weights"):
        build_encoder("small_resnet", weights="imagenet")
