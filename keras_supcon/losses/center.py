"""Center loss (Wen et al. 2016, "A Discriminative Feature Learning Approach
for Deep Face Recognition").

For features ``x_i`` ``[B, F]`` with labels ``y_i`` and class centres ``c_j``
``[K, F]``::

    L_C = 1/B sum_i 1/2 ||x_i - c_{y_i}||^2                       (mean over the batch)

The centres are not learned by backpropagation but moved towards the batch
features of their class (paper eq. 4)::

    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),   c_j <- c_j - alpha delta_c_j

so a class absent from the batch keeps its centre. :class:`CenterLoss` is a
layer holding the centres; it adds ``weight * L_C`` to the model's losses and
updates the centres during training (like BatchNormalization's statistics).

On several ``tf.distribute`` replicas, every replica computes the update from
the global batch's features and labels (:mod:`~keras_supcon.losses.replicas`),
so the centres stay identical on every replica and equal to the one-device
update; ``L_C`` is a mean over samples, which Keras already divides among replicas.
"""

import keras
from keras import ops

from keras_supcon.losses.replicas import global_batch
from keras_supcon.losses.similarity import as_float_tensor

MISSING_LABELS = "center loss needs the class labels: call CenterLoss()([features, labels])."


def _labels(labels):
    """``[B]`` or ``[B, 1]`` int or float labels -> ``[B]`` int32."""
    return ops.reshape(ops.cast(labels, "int32"), (-1,))


def center_loss(features, labels, centers):
    """``mean_i 0.5 * ||x_i - c_{y_i}||^2``; features ``[B, F]``, labels ``[B]``
    (in ``[0, K)``), centers ``[K, F]`` (under ``stop_gradient``). Returns a scalar."""
    features = as_float_tensor(features)
    centers = ops.stop_gradient(ops.cast(centers, features.dtype))
    own = ops.take(centers, _labels(labels), axis=0)
    return 0.5 * ops.mean(ops.sum(ops.square(features - own), axis=-1))


def update_centers(features, labels, centers, alpha):
    """The centres after one step of paper eq. 4 with rate ``alpha``, ``[K, F]``
    (in the features' float dtype; no gradient flows through it)."""
    features = ops.stop_gradient(as_float_tensor(features))
    centers = ops.stop_gradient(ops.cast(centers, features.dtype))
    onehot = ops.one_hot(_labels(labels), ops.shape(centers)[0], dtype=features.dtype)  # [B, K]
    counts = ops.expand_dims(ops.sum(onehot, axis=0), 1)                                  # [K, 1]
    delta = (counts * centers - ops.matmul(ops.transpose(onehot), features)) / (1.0 + counts)
    return centers - alpha * delta


@keras.saving.register_keras_serializable(package="keras_supcon")
class CenterLoss(keras.layers.Layer):
    """Adds ``weight * center_loss`` during training and updates the centres.

    Call it as ``CenterLoss(num_classes)([features, labels])``: ``features``
    ``[B, F]``, ``labels`` ``[B]`` or ``[B, 1]`` (int or float). It returns
    ``features`` unchanged. The centres are a non-trainable float32 weight
    ``[num_classes, F]`` (zeros at start); the loss and the update are computed
    in float32 even under mixed precision. Defaults are the paper's
    (``lambda = 0.003``, ``alpha = 0.5``).
    """

    def __init__(self, num_classes, weight=0.003, alpha=0.5, **kwargs):
        super().__init__(**kwargs)
        if not int(num_classes) >= 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
        if not float(weight) >= 0:
            raise ValueError(f"weight must be >= 0; got {weight}.")
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"alpha must be in (0, 1]; got {alpha}.")
        self.num_classes = int(num_classes)
        self.weight = float(weight)
        self.alpha = float(alpha)

    @staticmethod
    def _split(inputs, shapes=False):
        """``[features, labels]`` (or their shapes) -> the pair, else ValueError."""
        if (not isinstance(inputs, (list, tuple)) or len(inputs) != 2 or inputs[1] is None
                or (shapes and not isinstance(inputs[0], (list, tuple)))):
            raise ValueError(MISSING_LABELS)
        return inputs

    def build(self, input_shape):
        feature_shape, _ = self._split(input_shape, shapes=True)
        self.centers = self.add_weight(
            shape=(self.num_classes, feature_shape[-1]), initializer="zeros",
            trainable=False, dtype="float32", autocast=False, name="centers")

    def call(self, inputs, training=None):
        features, labels = self._split(inputs)
        if training:
            # One read for the loss and the update: the update depends on it, so the
            # loss sees the centres before the update.
            centers = ops.convert_to_tensor(self.centers)
            batch = global_batch(ops.cast(features, "float32"), ops.reshape(labels, (-1,)))
            if batch.replicas.count > 1:
                # MirroredStrategy traces its replicas in turns, switching at each
                # all-reduce, and every replica's add_loss() goes to this one layer
                # object: replica 0 adds its loss and pauses at its next all-reduce
                # (the optimizer's), then replica 1 resumes here. Dropping what an
                # earlier replica left keeps each replica's total to its own loss;
                # added before the gather, replica 1's loss replaced replica 0's.
                self._clear_losses()
            self.add_loss(self.weight * center_loss(features, labels, centers))
            new = update_centers(batch.all_rows, batch.all_labels, centers, self.alpha)
            self.centers.assign(ops.cast(new, self.centers.dtype))
        return features

    def compute_output_shape(self, input_shape):
        return self._split(input_shape, shapes=True)[0]

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, weight=self.weight, alpha=self.alpha)
        return config
