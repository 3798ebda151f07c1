import keras
import numpy as np
import pytest
import tf_keras
from tolerances import F32

from keras_supcon.errors import ConfigError, OfflineError
from keras_supcon.models import (
    BACKBONES,
    ImagePreprocess,
    build_backbone,
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
                                             ("resnet50", 31), ("small_resnet", 7),
                                             ("resnet18", 31), ("resnet18_cifar", 7),
                                             ("vgg16bn", 31), ("pixels", 0)])
def test_image_size_below_minimum_is_refused(name, too_small):
    with pytest.raises(ConfigError, match=f"minimum of {name}"):
        build_encoder(name, too_small)


# Trainable parameters of the torchvision models minus their classifier tops:
# resnet18 11,689,512 - fc 512*1000+1000; vgg16_bn 138,365,992 - the three FC layers
# (25088*4096+4096 + 4096*4096+4096 + 4096*1000+1000). The CIFAR stem trades the
# 7x7x3x64 stem kernel for a 3x3x3x64 one. Non-trainable: BatchNorm moving statistics.
OWN_BACKBONES = {  # name: (features at 32x32, trainable, non-trainable, literature)
    "resnet18": (512, 11_689_512 - 513_000, 2 * 4800, 11.17e6),
    "resnet18_cifar": (512, 11_689_512 - 513_000 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64, 2 * 4800,
                       11.17e6),
    "vgg16bn": (512, 138_365_992 - 123_642_856, 2 * 4224, 14.7e6),
    "pixels": (32 * 32 * 3, 0, 0, 0),
}


@pytest.mark.parametrize("name", sorted(OWN_BACKBONES))
def test_own_backbones_output_shapes_and_parameter_counts(name):
    features, trainable, non_trainable, literature = OWN_BACKBONES[name]
    spec = BACKBONES[name]
    assert not spec.has_imagenet and spec.default_size == 32 and spec.preprocess == "tf"
    backbone = build_backbone(name, (32, 32, 3))
    assert backbone.name == name and backbone.output_shape == (None, features)
    n_trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    assert n_trainable == trainable
    assert backbone.count_params() - n_trainable == non_trainable
    assert n_trainable == pytest.approx(literature, rel=0.005, abs=1)
    with pytest.raises(ConfigError, match=f"{name} has no ImageNet weights"):
        build_encoder(name, weights="imagenet")


@pytest.mark.parametrize("name", ["small_resnet"] + sorted(OWN_BACKBONES))
def test_own_backbones_have_the_same_layer_names_in_tf_keras(name):
    size = BACKBONES[name].min_size

    def names(K):  # the unnamed input layer aside (weightless, auto-numbered)
        return [layer.name for layer in build_backbone(name, (size, size, 3), K=K).layers[1:]]

    assert names(keras) == names(tf_keras)
    assert len(set(names(keras))) == len(names(keras))


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet18_cifar", 8),
                                       ("vgg16bn", 32), ("pixels", 1)])
def test_own_backbones_run_at_their_minimum_size(name, size):
    assert BACKBONES[name].min_size == size
    encoder = build_encoder(name, size)
    features = np.asarray(encoder(_images(2, size), training=False))
    assert features.shape == (2, encoder.output_shape[-1]) and np.isfinite(features).all()
    assert features.std() > 0


@pytest.mark.parametrize("name,final_map", [("resnet18", 1), ("resnet18_cifar", 4)])
def test_cifar_stem_keeps_more_spatial_resolution(name, final_map):
    backbone = build_backbone(name, (32, 32, 3))
    last = keras.Model(backbone.input, backbone.get_layer("stage4_block2_out").output)
    assert last.output_shape == (None, final_map, final_map, 512)
    assert np.asarray(last(_images(1, 32) / 127.5 - 1)).shape == (1, final_map, final_map, 512)
    layers = {layer.name for layer in backbone.layers}
    assert ("stem_pool" in layers) == (name == "resnet18")
    assert backbone.get_layer("stem_conv").kernel.shape == ((7, 7) if name == "resnet18"
                                                            else (3, 3)) + (3, 64)


def test_pixels_is_the_flattened_preprocessed_image():
    encoder = build_encoder("pixels", 8)
    x = _images(3, 8)
    got = np.asarray(encoder(x))
    assert got.shape == (3, 8 * 8 * 3)
    preprocessed = np.asarray(encoder.get_layer("preprocess")(x))
    np.testing.assert_array_equal(got, preprocessed.reshape(3, -1))
    np.testing.assert_allclose(got, (x / 127.5 - 1).reshape(3, -1), rtol=0, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1
    # softmax regression: the classifier on pixels is one Dense layer on S*S*3 inputs
    assert build_classifier(encoder, 10).count_params() == 8 * 8 * 3 * 10 + 10


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg99'.*densenet201"):
        build_encoder("vgg99")


def test_model_shapes_and_unit_norm_embeddings():
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 32, 8)
    model = build_contrastive_model(encoder, head, views=3)
    z = np.asarray(model(np.stack([_images(4, 16, s) for s in range(3)], axis=1)))
    assert z.shape == (4, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, **F32)
    probs = np.asarray(build_classifier(encoder, 5)(_images(4, 16)))
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, **F32)


def test_contrastive_model_encodes_each_view_like_the_encoder():
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 16, 4)
    model = build_contrastive_model(encoder, head)
    a, b = _images(3, 16, 1), _images(3, 16, 2)
    z = np.asarray(model(np.stack([a, b], axis=1), training=False))
    np.testing.assert_allclose(z[:, 1], np.asarray(head(encoder(b))), rtol=1e-5, atol=1e-6)


def test_contrastive_model_runs_all_views_as_one_batch():
    """BatchNorm statistics in training cover the B * V images together (the
    reference concatenates the views), not each view apart."""
    encoder = build_encoder("small_resnet", 16)
    head = build_projection_head(encoder.output_shape[-1], 16, 4)
    model = build_contrastive_model(encoder, head)
    a, b = _images(3, 16, 1), _images(3, 16, 2)
    z = np.asarray(model(np.stack([a, b], axis=1), training=True))
    # rows b * V + v: interleave the views as FoldViews does
    together = np.stack([a, b], axis=1).reshape((6, 16, 16, 3))
    expected = np.asarray(head(encoder(together, training=True), training=True))
    np.testing.assert_allclose(z.reshape(6, 4), expected, rtol=1e-5, atol=1e-6)
    alone = np.asarray(head(encoder(b, training=True), training=True))
    assert np.abs(z[:, 1] - alone).max() > 1e-3  # per-view statistics would give this


def test_frozen_encoder_runs_batchnorm_in_inference_mode():
    encoder = build_encoder("small_resnet", 16)
    classifier = build_classifier(freeze(encoder), 3)
    x = _images(8, 16)
    np.testing.assert_allclose(np.asarray(classifier(x, training=True)),
                               np.asarray(classifier(x, training=False)), **F32)
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
        np.testing.assert_allclose(np.asarray(loaded(inp)), np.asarray(m(inp)), **F32)
    assert isinstance(keras.models.load_model(tmp_path / "classifier.keras")
                      .get_layer("encoder_small_resnet").get_layer("preprocess"), ImagePreprocess)


def test_tf_keras_twin_from_the_same_builder_matches():
    x = _images(4, 16)
    classifier = build_classifier(build_encoder("small_resnet", 16), 5)
    twin = build_classifier(build_encoder("small_resnet", 16, K=tf_keras), 5, K=tf_keras)
    assert [w.shape for w in twin.weights] == [tuple(w.shape) for w in classifier.weights]
    twin.set_weights(classifier.get_weights())
    # two frameworks' graphs of the same layers: equal up to float32 round-off (their kernels
    # need not associate sums alike), not to the bit
    np.testing.assert_allclose(twin.predict(x, verbose=0), classifier.predict(x, verbose=0),
                               **F32)


def test_weights_from_a_local_file(tmp_path):
    source = build_encoder("small_resnet", 16)
    backbone = source.get_layer("small_resnet")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    loaded = build_encoder("small_resnet", 16, weights=str(path))
    x = _images(2, 16)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), **F32)
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
