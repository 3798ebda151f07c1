"""A short training job as one of several JAX processes; run by ``test_distribute.py``.

``python tests/multiprocess_step.py OUT.npz``, with ``KERAS_DISTRIBUTION_*`` set
as for every process of a multi-process run, trains a small contrastive model
for a few SGD steps with ``--strategy data-parallel``
(:func:`keras_supcon.training.distribute.distribution_scope`, which calls
``keras.distribution.initialize()`` when ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1),
each process holding one CPU device. Every process passes the same global
``tf.data`` batches to ``fit``; ``DataParallel`` shards them (process ``p`` gets
the ``p``-th slice of each global batch), as the training job relies on. With
``KERAS_DISTRIBUTION_NUM_PROCESSES`` unset it is the single-process reference on
the whole batch. The initial and final weights go to ``OUT.npz``.

``python tests/multiprocess_step.py OUT.npz --job TRAIN-OPTIONS...`` then runs
``keras_supcon.train`` with those options in the same processes (one start of each
process and of the distributed runtime for both checks).
"""

import os
import sys

out = sys.argv[1]
job_args = sys.argv[3:] if sys.argv[2:3] == ["--job"] else None
processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"))
process = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0"))
os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_supcon.losses import SupConLoss, TripletLoss  # noqa: E402
from keras_supcon.training.distribute import distribution_scope  # noqa: E402

GLOBAL_BATCH, STEPS, VIEWS, WIDTH = 12, 4, 2, 6
LOSSES = {"supcon": lambda: SupConLoss(temperature=0.2),
          "triplet_semihard": lambda: TripletLoss(margin=0.5)}


def build():
    inputs = keras.Input((VIEWS, WIDTH))
    x = keras.layers.Dense(16, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * GLOBAL_BATCH, VIEWS, WIDTH)).astype("float32")
y = rng.integers(0, 3, size=STEPS * GLOBAL_BATCH).astype("int32")
result = {}
with distribution_scope("data-parallel") as devices:
    assert devices == processes, devices
    for name, loss in LOSSES.items():
        keras.utils.set_random_seed(0)
        model = build()
        result.update({f"{name}/initial{i}": np.asarray(w)
                       for i, w in enumerate(model.get_weights())})
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss())
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        history = model.fit(data, epochs=1, verbose=0)
        result[f"{name}/loss"] = np.float64(history.history["loss"][0])
        for i, w in enumerate(model.get_weights()):
            result[f"{name}/weight{i}"] = np.asarray(w)
np.savez(out, **result)
print("ok", process, processes, flush=True)
if job_args is not None:
    from keras_supcon.cli.train import main

    sys.exit(main(job_args))
