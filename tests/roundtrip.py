"""Shared checks that a loss or layer survives Keras serialisation (as KerasHub's
``run_layer_test`` does for its layers)."""

import keras
import numpy as np
from tolerances import F32


def assert_loss_round_trip(loss, y_true, y_pred):
    """``loss`` serialises to the same class and config and gives the same value; returns it."""
    value = float(loss(y_true, y_pred))
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    assert type(loss).from_config(loss.get_config()).get_config() == loss.get_config()
    np.testing.assert_allclose(float(clone(y_true, y_pred)), value, **F32)
    return value


def assert_layer_round_trip(layer):
    """``layer`` serialises to the same class and config; returns the clone."""
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    return clone
