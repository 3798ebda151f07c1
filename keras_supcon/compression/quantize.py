"""Post-training quantisation of an exported classifier to TFLite.

``dynamic``: int8 weights, float activations (no data needed). ``int8``: int8
weights and activations, calibrated on a representative set of training images;
the model keeps float32 input and output so it is used like the SavedModel.
Symmetric int8 weight quantisation maps 0 to 0, so pruned zeros stay zeros
(the gzip size in the report is where that shows).
"""

import numpy as np
import tensorflow as tf

from keras_supcon.compression.report import latency_ms
from keras_supcon.errors import ConfigError

MODES = ("dynamic", "int8")


def convert_tflite(saved_model_dir, mode="dynamic", representative_images=None):
    """Bytes of a TFLite model converted from the SavedModel at ``saved_model_dir``."""
    if mode not in MODES:
        raise ConfigError(f"unknown quantisation {mode!r}; choose one of: {', '.join(MODES)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ConfigError("full int8 quantisation needs representative images")
        images = np.asarray(representative_images, np.float32)

        def representative():
            for i in range(len(images)):
                yield [images[i:i + 1]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _interpreter(model_path):
    """A LiteRT interpreter (``ai_edge_litert``, the successor of the deprecated
    ``tf.lite.Interpreter``) for the TFLite model at ``model_path``."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(model_path))


def tflite_latency_ms(model_path, image):
    """Median CPU milliseconds of one call of the TFLite model on one ``image``."""
    interpreter = _interpreter(model_path)
    inp = interpreter.get_input_details()[0]
    image = np.asarray(image, np.float32)[None]
    interpreter.resize_tensor_input(inp["index"], image.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], image)
    return latency_ms(interpreter.invoke)


def tflite_predict(model_path, images, batch_size=64):
    """Outputs of the TFLite model at ``model_path`` for float ``images`` (LiteRT)."""
    interpreter = _interpreter(model_path)
    inp = interpreter.get_input_details()[0]
    out_index = interpreter.get_output_details()[0]["index"]
    images = np.asarray(images, np.float32)
    if not len(images):  # no batch to run: the empty outputs, shaped as the model's
        out_shape = interpreter.get_output_details()[0]["shape"]
        return np.zeros((0, *out_shape[1:]), np.float32)
    outputs = []
    size = None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if size != len(batch):
            size = len(batch)
            interpreter.resize_tensor_input(inp["index"], (size,) + images.shape[1:])
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out_index).copy())
    return np.concatenate(outputs)
