"""Export a classifier as a TensorFlow SavedModel: raw RGB images in, probabilities out."""

import numpy as np
import tensorflow as tf

SIGNATURE_INPUT = "images"
SIGNATURE_OUTPUT = "probabilities"


def export_saved_model(model, path):
    """Write ``model`` (Keras 3, images ``[B, S, S, 3]`` in [0, 255] -> probabilities) to
    ``path`` with a ``serving_default`` signature ``{"images"} -> {"probabilities"}``."""
    import keras

    image_shape = tuple(model.input_shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: {SIGNATURE_OUTPUT: model(images, training=False)},
        input_signature=[tf.TensorSpec((None,) + image_shape, tf.float32, name=SIGNATURE_INPUT)],
    )
    archive.write_out(str(path), verbose=False)
    return path


def serve_saved_model(path, images):
    """Probabilities from the ``serving_default`` signature of the SavedModel at ``path``."""
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    return fn(**{SIGNATURE_INPUT: tf.constant(images, tf.float32)})[SIGNATURE_OUTPUT].numpy()


def check_saved_model(path, model, images):
    """Max absolute difference between the SavedModel's and ``model``'s probabilities."""
    expected = np.asarray(model(images, training=False))
    return float(np.abs(serve_saved_model(path, images) - expected).max())
