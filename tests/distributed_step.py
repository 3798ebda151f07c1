"""One training step of small models, on one device and data-parallel over logical
CPU devices; run in a subprocess by ``test_distribute.py``.

``python tests/distributed_step.py --job REPLICAS TRAIN-OPTIONS...`` runs
``keras_supcon.train`` on ``REPLICAS`` logical CPU devices.

``python tests/distributed_step.py OUT.npz REPLICAS`` saves, for every loss of
:data:`CASES` and every label pattern of :data:`PATTERNS`, the weight change and
the loss of one SGD step (lr 1, so the change is minus the gradient; for the
center loss the centres' change too) on one device with the whole batch and on
``REPLICAS`` replicas: ``tf.distribute.MirroredStrategy`` on TensorFlow,
``keras.distribution.DataParallel`` on JAX (``KERAS_BACKEND=jax``). The one-device
reference runs eagerly (one step: nothing to gain from tracing it); the replicated step
runs as training does. Case names after ``REPLICAS`` restrict the run to those cases.
"""

import os
import sys

job = sys.argv[1] == "--job"
out, replicas = sys.argv[1], int(sys.argv[2])
backend = os.environ.get("KERAS_BACKEND", "tensorflow")
if backend == "jax":
    # (other XLA flags, e.g. the suite's --isa cap, are kept)
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        f"--xla_force_host_platform_device_count={replicas}"])
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

from keras_supcon.losses import (  # noqa: E402
    BarlowTwinsLoss,
    CenterLoss,
    NPairsLoss,
    SimCLRLoss,
    SupConLoss,
    TripletLoss,
    joint_loss,
)
from keras_supcon.models import build_classifier, build_joint_model  # noqa: E402
from keras_supcon.training.distribute import distribution_scope  # noqa: E402

BATCH, WIDTH, CLASSES = 12, 6, 6
# Label patterns of the 12 images; the batch splits over 2 replicas as 6 + 6 and
# over 3 as 4 + 4 + 4.
PATTERNS = {
    # Two views per image; on 2 replicas the halves hold different classes
    # ({0, 1} / {2, 3}), on 3 replicas each holds a class no other one holds.
    "split_classes": (2, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]),
    # One view per image: on 2 and on 3 replicas some anchors' only positive
    # is on another replica (classes 2 and 3; on 3 replicas also 4 and 5),
    # and some replica holds classes no other one holds (0 and 1).
    "positive_elsewhere": (1, [0, 0, 1, 1, 2, 3, 4, 5, 2, 3, 4, 5]),
}
EMBEDDING_LOSSES = {
    "supcon_out": lambda: SupConLoss(temperature=0.2),
    "supcon_in": lambda: SupConLoss(temperature=0.2, variant="in"),
    "npairs": lambda: NPairsLoss(temperature=0.2),
    "triplet_hard": lambda: TripletLoss(margin=0.5, mining="hard"),
    "triplet_all": lambda: TripletLoss(margin=0.5, mining="all"),
    "triplet_semihard": lambda: TripletLoss(margin=0.5, mining="semihard"),
    # A fixed draw: the same seed gives the same first draw in both runs.
    "triplet_random": lambda: TripletLoss(margin=0.5, mining="random", seed=7),
    # Label-free: two views of each image are the positives.
    "simclr": lambda: SimCLRLoss(temperature=0.2),
    "barlow": lambda: BarlowTwinsLoss(lambda_=0.05),
}
UNSUPERVISED = ("simclr", "barlow")
CASES = (*EMBEDDING_LOSSES, "center", "joint")


def encoder():
    """``[WIDTH]`` -> ``[16]``; no BatchNorm, whose statistics are per replica, so
    that both runs compute the same function."""
    inputs = keras.Input((WIDTH,))
    return keras.Model(inputs, keras.layers.Dense(16, activation="tanh")(inputs))


def build(case, views):
    """The model of ``case`` and its ``compile`` arguments."""
    if case == "center":
        classifier = build_classifier(encoder(), CLASSES)
        images = keras.Input((WIDTH,))
        labels = keras.Input((), dtype="int32")
        x = classifier.layers[1](images)
        x = CenterLoss(CLASSES, weight=0.5, alpha=0.5)([x, labels])
        model = keras.Model([images, labels], classifier.layers[-1](x))
        return model, dict(loss="sparse_categorical_crossentropy")
    head = keras.Sequential([keras.layers.Dense(4)])
    if case == "joint":
        enc = encoder()
        model = build_joint_model(enc, head, build_classifier(enc, CLASSES), views=views)
        return model, joint_loss(supcon_weight=0.5, temperature=0.2)
    inputs = keras.Input((views, WIDTH))
    model = keras.Model(inputs, head(keras.layers.Dense(16, activation="tanh")(inputs)))
    return model, dict(loss=EMBEDDING_LOSSES[case]())


def batch(case, views, labels, rng):
    """``(x, y)`` of the whole batch for ``case``."""
    x = rng.normal(size=(BATCH, views, WIDTH)).astype("float32")
    y = np.asarray(labels, dtype="int32")
    if case == "center":
        return (x[:, 0], y), y
    if case == "joint":
        return x, {"projections": y, "probabilities": np.repeat(y[:, None], views, axis=1)}
    return x, y


def one_step(case, views, x, y, weights, strategy):
    with distribution_scope(strategy) as n:
        assert n == (1 if strategy == "none" else replicas), (strategy, n)
        model, compiled = build(case, views)
        model.set_weights(weights)
        # The one-device reference runs eagerly (no tf.function to trace for one step)
        model.compile(optimizer=keras.optimizers.SGD(1.0), run_eagerly=strategy == "none",
                      **compiled)
        if strategy == "mirrored":
            import tensorflow as tf

            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
            history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        else:
            history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        loss = history.history["loss"][0]
        after = [np.asarray(w) for w in model.get_weights()]
    return [w0 - w1 for w0, w1 in zip(weights, after)], loss


def main():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    distributed = "mirrored" if backend == "tensorflow" else "data-parallel"
    result = {}
    only = sys.argv[3:]  # some cases only (for debugging)
    for pattern, (views, labels) in PATTERNS.items():
        for case in CASES:
            if only and case not in only or case in UNSUPERVISED and views < 2:
                continue
            x, y = batch(case, views, labels, rng)
            weights = [np.asarray(w) for w in build(case, views)[0].get_weights()]
            for strategy in ("none", distributed):
                delta, loss = one_step(case, views, x, y, weights, strategy)
                tag = f"{case}/{pattern}/{'single' if strategy == 'none' else 'replicas'}"
                result[f"{tag}/loss"] = np.float64(loss)
                for i, d in enumerate(delta):
                    result[f"{tag}/delta{i}"] = d
    np.savez(out, **result)
    print("ok", backend, replicas)


main()
