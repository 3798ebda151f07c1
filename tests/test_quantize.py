"""keras_supcon.compression.quantize on a tiny classifier trained on digits (8 x 8 x 3 images in
[0, 255], one convolution, a 512 -> 64 dense layer, a softmax head): the converted models
answer like the Keras model within what int8 allows, are smaller than the float32 model,
keep float32 input and output, keep pruned zeros, and ``tflite_predict`` batches
correctly."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from tolerances import F32, F32_DEEP

from keras_supcon.compression.quantize import (
    MODES,
    convert_tflite,
    tflite_latency_ms,
    tflite_predict,
)
from keras_supcon.compression.report import zipped_bytes
from keras_supcon.errors import ConfigError
from keras_supcon.runs.export import export_saved_model

HIDDEN = "hidden"  # its 512 x 64 kernel is the one TFLite quantises in "dynamic" mode:
# the converter leaves weights of under 1024 elements (the convolution's, the head's) in float


def _digits():
    d = load_digits()
    images = np.repeat(d.images[..., None] * (255.0 / 16.0), 3, axis=-1).astype(np.float32)
    return images[:1400], d.target[:1400], images[1400:], d.target[1400:]


def _classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu", name=HIDDEN)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def _float_tflite(saved_model):
    """The float32 TFLite model: the same conversion without quantisation."""
    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize")
    x_train, y_train, x_test, y_test = _digits()
    model = _classifier()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    export_saved_model(model, tmp / "saved_model")
    paths = {"float32": tmp / "float32.tflite"}
    paths["float32"].write_bytes(_float_tflite(tmp / "saved_model"))
    for mode in MODES:
        paths[mode] = tmp / f"{mode}.tflite"
        paths[mode].write_bytes(convert_tflite(tmp / "saved_model", mode, x_train[:128]))
    expected = np.asarray(model(x_test, training=False))
    return dict(model=model, paths=paths, x_test=x_test, y_test=y_test, expected=expected,
                saved_model=tmp / "saved_model", tmp=tmp, x_train=x_train)


# Tolerances on the probabilities (values in [0, 1]), not F32's: quantisation, not round-off.
# The softmax moves no probability by more than half the largest change of a logit.
# "dynamic": int8 weights in steps of 1/127 of each kernel row's largest |w| and the dense
# layer's inputs quantised to int8 on the fly: ~1% of a logit, and the logits of a confident
# digit reach 10-20, so up to ~0.1 of a logit and 0.05 of a probability where the softmax is
# not saturated. Observed: 0.009 at most over the 397 test images (AVX-512 CPU).
DYNAMIC = dict(rtol=0, atol=0.05)
# "int8": the activations too, in 256 steps calibrated on 128 training images, and the output
# probabilities themselves in steps of 1/256: a few steps of error per layer, compounded over
# three layers. Observed: 0.029 at most; 0.1 gives 3x room.
INT8 = dict(rtol=0, atol=0.1)


@pytest.mark.parametrize("mode,tol,min_agree", [("dynamic", DYNAMIC, 0.99),
                                                ("int8", INT8, 0.97)])
def test_quantised_outputs_agree_with_the_keras_model(models, mode, tol, min_agree):
    expected, x_test, y_test = models["expected"], models["x_test"], models["y_test"]
    # the model learnt the task (0.91 observed), and its outputs for two different images
    # differ by far more than the tolerance (0.9 on average observed): the outputs of a wrong
    # model, or of the wrong images, would not pass
    assert (expected.argmax(axis=1) == y_test).mean() > 0.8
    other = expected[np.random.default_rng(0).permutation(len(expected))]
    assert np.abs(expected - other).max(axis=1).mean() > 5 * tol["atol"]
    got = tflite_predict(models["paths"][mode], x_test)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, **tol)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=2 * tol["atol"])
    # the predicted classes: the same but for near-ties
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= min_agree


def test_float_tflite_is_the_keras_model(models):
    """The reference the sizes are compared with computes what the Keras model does (float32
    through three layers on other kernels: F32_DEEP; observed 1.1e-6)."""
    np.testing.assert_allclose(tflite_predict(models["paths"]["float32"], models["x_test"]),
                               models["expected"], **F32_DEEP)


def test_quantised_models_are_smaller_than_float32(models):
    sizes = {k: p.stat().st_size for k, p in models["paths"].items()}
    assert all(s > 0 for s in sizes.values()), sizes
    # the 512 x 64 kernel (131 kB of float32, most of the model) takes a quarter in int8
    assert sizes["dynamic"] < 0.5 * sizes["float32"], sizes
    assert sizes["int8"] < 0.5 * sizes["float32"], sizes


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter  # LiteRT, as quantize.tflite_predict

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def test_int8_keeps_float_input_and_output_and_computes_in_int8(models):
    for mode in MODES:
        interpreter = _interpreter(models["paths"][mode])
        assert interpreter.get_input_details()[0]["dtype"] == np.float32
        assert interpreter.get_output_details()[0]["dtype"] == np.float32
        kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
        assert np.int8 in kinds, (mode, kinds)
    # "dynamic" quantises weights (here the one kernel of over 1024 elements), "int8" every
    # kernel and the activations as well
    counts = {mode: sum(d["dtype"] == np.int8 for d in
                        _interpreter(models["paths"][mode]).get_tensor_details())
              for mode in MODES}
    assert counts["int8"] > 3 * counts["dynamic"] >= 3, counts


def _int8_kernel(path, shape):
    interpreter = _interpreter(path)
    found = [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
             if d["dtype"] == np.int8 and tuple(d["shape"]) == shape and HIDDEN in d["name"]]
    assert len(found) == 1, [(d["name"], d["shape"]) for d in interpreter.get_tensor_details()]
    return found[0]


@pytest.mark.parametrize("mode", MODES)
def test_pruned_zeros_stay_zeros(models, mode):
    """Symmetric int8 quantisation maps 0 to 0: the zeros of a pruned kernel are zeros of
    its int8 kernel, and the zipped TFLite file is smaller for them."""
    model = keras.models.clone_model(models["model"])
    model.set_weights(models["model"].get_weights())
    layer = model.get_layer(HIDDEN)
    kernel, bias = layer.get_weights()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.75)] = 0.0  # 75% sparse
    layer.set_weights([kernel, bias])
    export_saved_model(model, models["tmp"] / f"pruned_{mode}")
    path = models["tmp"] / f"pruned_{mode}.tflite"
    path.write_bytes(convert_tflite(models["tmp"] / f"pruned_{mode}", mode,
                                    models["x_train"][:128]))
    q = _int8_kernel(path, kernel.T.shape)  # TFLite's fully-connected weights are [out, in]
    assert np.all(q[kernel.T == 0] == 0)
    assert np.count_nonzero(q) <= np.count_nonzero(kernel)
    assert np.count_nonzero(q) > 0.9 * np.count_nonzero(kernel)  # the rest mostly survive
    assert zipped_bytes(path) < 0.8 * zipped_bytes(models["paths"][mode])


@pytest.mark.parametrize("mode", ["float32", *MODES])
def test_predict_in_batches_of_any_size(models, mode):
    """Batches of 7 (the last one of 2) give what batches of 64 give, and one image at a
    time too: the interpreter is resized for each batch size."""
    images = models["x_test"][:30]
    path = models["paths"][mode]
    with warnings.catch_warnings():  # LiteRT, not the deprecated tf.lite.Interpreter
        warnings.simplefilter("error")
        whole = tflite_predict(path, images)
    np.testing.assert_allclose(tflite_predict(path, images, batch_size=7), whole, **F32)
    np.testing.assert_allclose(tflite_predict(path, images, batch_size=1), whole, **F32)
    # float64 images are converted to float32
    np.testing.assert_allclose(tflite_predict(path, images.astype(np.float64)), whole, **F32)
    assert tflite_predict(str(path), images[:1]).shape == (1, 10)
    assert tflite_predict(path, images[:0]).shape == (0, 10)  # no images: no outputs
    assert tflite_latency_ms(path, images[0]) > 0


def test_unknown_mode_is_a_config_error(models):
    with pytest.raises(ConfigError, match=r"unknown quantisation 'int4'; choose one of: "
                                          r"dynamic, int8"):
        convert_tflite(models["saved_model"], "int4")


@pytest.mark.parametrize("images", [None, [], np.zeros((0, 8, 8, 3), np.float32)])
def test_int8_needs_representative_images(models, images):
    with pytest.raises(ConfigError, match="needs representative images"):
        convert_tflite(models["saved_model"], "int8", images)
