"""One training step of a small contrastive model, on one device and data-parallel
over logical CPU devices; run in a subprocess by ``test_distribute.py``.

``python tests/distributed_step.py --job REPLICAS TRAIN-OPTIONS...`` runs
``keras_supcon.train`` on ``REPLICAS`` logical CPU devices.

``python tests/distributed_step.py OUT.npz REPLICAS`` saves, for each loss, the
weight change and the loss of one SGD step (lr 1, so the change is minus the
gradient) on one device with the whole batch and on ``REPLICAS`` replicas:
``tf.distribute.MirroredStrategy`` on TensorFlow, ``keras.distribution.DataParallel``
on JAX (``KERAS_BACKEND=jax``).
"""

import os
import sys

job = sys.argv[1] == "--job"
out, replicas = sys.argv[1], int(sys.argv[2])
backend = os.environ.get("KERAS_BACKEND", "tensorflow")
if backend == "jax":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={replicas}"
else:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)

if job:
    from keras_supcon.cli.train import main

    sys.exit(main(sys.argv[3:]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_supcon.losses import NPairsLoss, SimCLRLoss, SupConLoss  # noqa: E402
from keras_supcon.training.distribute import distribution_scope  # noqa: E402

BATCH, VIEWS, WIDTH = 12, 2, 6
LOSSES = {
    "supcon_out": lambda: SupConLoss(temperature=0.2),
    "supcon_in": lambda: SupConLoss(temperature=0.2, variant="in"),
    "simclr": lambda: SimCLRLoss(temperature=0.2),
    "npairs": lambda: NPairsLoss(temperature=0.2),
}


def build():
    """Views ``[B, V, WIDTH]`` -> embeddings ``[B, V, 4]``; no BatchNorm, whose
    statistics are per replica, so that both runs compute the same function."""
    inputs = keras.Input((VIEWS, WIDTH))
    x = keras.layers.Dense(16, activation="tanh")(inputs)
    x = keras.layers.Dense(4)(x)
    return keras.Model(inputs, x)


def one_step(loss_name, x, y, weights, strategy):
    with distribution_scope(strategy) as n:
        assert n == (1 if strategy == "none" else replicas), (strategy, n)
        model = build()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSSES[loss_name]())
        if strategy == "mirrored":
            import tensorflow as tf

            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
            history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        else:
            history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        loss = history.history["loss"][0]
        after = [np.asarray(w) for w in model.get_weights()]
    return [w0 - w1 for w0, w1 in zip(weights, after)], loss


rng = np.random.default_rng(0)
x = rng.normal(size=(BATCH, VIEWS, WIDTH)).astype("float32")
y = rng.integers(0, 3, size=BATCH)
weights = build().get_weights()
distributed = "mirrored" if backend == "tensorflow" else "data-parallel"
result = {}
for name in LOSSES:
    for strategy in ("none", distributed):
        delta, loss = one_step(name, x, y, weights, strategy)
        tag = "single" if strategy == "none" else "replicas"
        result[f"{name}/{tag}/loss"] = np.float64(loss)
        for i, d in enumerate(delta):
            result[f"{name}/{tag}/delta{i}"] = d
np.savez(out, **result)
print("ok", backend, replicas)
