"""One training step of small models, on one device and data-parallel over logical
CPU devices; run in a subprocess by ``test_distribute.py``.

``python tests/distributed_step.py OUT.npz REPLICAS [--job TRAIN-OPTIONS...]`` saves, for
every loss of
:data:`CASES` and every label pattern of :data:`PATTERNS`, the weight change and
the loss of one SGD step (lr 1, so the change is minus the gradient; for the
center loss the centres' change too) on one device with the whole batch and on
``REPLICAS`` replicas: ``tf.distribute.MirroredStrategy`` on TensorFlow,
``keras.distribution.DataParallel`` on JAX (``KERAS_BACKEND=jax``). The embedding
losses train side by side in one model, a branch each (one step to trace instead of
nine); the center loss and the SupCon + CE model each have their own. On TensorFlow
the one-device reference runs eagerly (one step: nothing to gain from tracing it); on
JAX it is compiled, because eager JAX compiles every op on its own (2-3x slower for one
step). The replicated step runs as training does, except that TensorFlow's graph
optimiser (Grappler) is off: its rewrites are not what is tested (about 10% of the time).

With ``--job``, the same process then runs ``keras_supcon.train`` with the options that
follow (Grappler back on), on the same ``REPLICAS`` devices: one process start and one
backend start for both checks.
"""

import os
import sys

out, replicas = sys.argv[1], int(sys.argv[2])
job_args = sys.argv[4:] if sys.argv[3:4] == ["--job"] else None
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
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

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
# The one-device reference step runs eagerly on TensorFlow (see the module docstring).
EAGER = backend == "tensorflow"
CASES = (*EMBEDDING_LOSSES, "center", "joint")


def encoder():
    """``[WIDTH]`` -> ``[16]``; no BatchNorm, whose statistics are per replica, so
    that both runs compute the same function."""
    inputs = keras.Input((WIDTH,))
    return keras.Model(inputs, keras.layers.Dense(16, activation="tanh")(inputs))


def embedding_cases(views):
    """The embedding losses that apply to ``views`` views (label-free ones need two)."""
    return [case for case in EMBEDDING_LOSSES if views > 1 or case not in UNSUPERVISED]


def build(group, views):
    """The model of ``group`` and its ``compile`` arguments. ``"embedding"``: one branch
    per embedding loss (``[views, WIDTH]`` -> Dense(16, tanh) -> Dense(4), layers named
    after the loss), trained in one step; branches share no weight, so each branch's
    gradient is that of its own loss. ``"center"``, ``"joint"``: one model each."""
    if group == "center":
        classifier = build_classifier(encoder(), CLASSES)
        images = keras.Input((WIDTH,))
        labels = keras.Input((), dtype="int32")
        x = classifier.layers[1](images)
        x = CenterLoss(CLASSES, weight=0.5, alpha=0.5)([x, labels])
        model = keras.Model([images, labels], classifier.layers[-1](x))
        return model, dict(loss="sparse_categorical_crossentropy")
    if group == "joint":
        enc = encoder()
        head = keras.Sequential([keras.layers.Dense(4)])
        model = build_joint_model(enc, head, build_classifier(enc, CLASSES), views=views)
        return model, joint_loss(supcon_weight=0.5, temperature=0.2)
    inputs = keras.Input((views, WIDTH))
    outputs = {case: keras.layers.Dense(4, name=f"{case}_head")(
        keras.layers.Dense(16, activation="tanh", name=f"{case}_hidden")(inputs))
        for case in embedding_cases(views)}
    return keras.Model(inputs, outputs), dict(
        loss={case: EMBEDDING_LOSSES[case]() for case in outputs})


def batch(group, views, labels, rng):
    """``(x, y)`` of the whole batch for ``group``."""
    x = rng.normal(size=(BATCH, views, WIDTH)).astype("float32")
    y = np.asarray(labels, dtype="int32")
    if group == "center":
        return (x[:, 0], y), y
    if group == "joint":
        return x, {"projections": y, "probabilities": np.repeat(y[:, None], views, axis=1)}
    return x, {case: y for case in embedding_cases(views)}


def one_step(group, views, x, y, weights, strategy):
    """``({weight path: change}, history)`` of one SGD step (lr 1) of ``group``'s model."""
    with distribution_scope(strategy) as n:
        assert n == (1 if strategy == "none" else replicas), (strategy, n)
        model, compiled = build(group, views)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(1.0),
                      run_eagerly=EAGER and strategy == "none", **compiled)
        if strategy == "mirrored":
            import tensorflow as tf

            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
            history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        else:
            history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        deltas = {w.path: w0 - np.asarray(w) for w, w0 in zip(model.weights, weights)}
    return deltas, {k: v[0] for k, v in history.history.items()}


def case_results(group, views, deltas, losses):
    """``{case: (loss, [weight changes])}`` of one step of ``group``."""
    if group != "embedding":
        return {group: (losses["loss"], list(deltas.values()))}
    return {case: (losses[f"{case}_loss"],
                   [d for path, d in deltas.items()
                    if path.split("/")[0] in (f"{case}_hidden", f"{case}_head")])
            for case in embedding_cases(views)}


def main():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    distributed = "mirrored" if backend == "tensorflow" else "data-parallel"
    result = {}
    for pattern, (views, labels) in PATTERNS.items():
        for group in ("embedding", "center", "joint"):
            x, y = batch(group, views, labels, rng)
            weights = [np.asarray(w) for w in build(group, views)[0].get_weights()]
            for strategy in ("none", distributed):
                deltas, losses = one_step(group, views, x, y, weights, strategy)
                run = "single" if strategy == "none" else "replicas"
                for case, (loss, case_deltas) in case_results(group, views, deltas,
                                                              losses).items():
                    tag = f"{case}/{pattern}/{run}"
                    result[f"{tag}/loss"] = np.float64(loss)
                    for i, d in enumerate(case_deltas):
                        result[f"{tag}/delta{i}"] = d
    np.savez(out, **result)
    print("ok", backend, replicas)


def train_job(args):
    """``keras_supcon.train ARGS`` as a user runs it (Grappler on again: the job keeps it)."""
    from keras_supcon.cli.train import main as train_main

    if backend == "tensorflow":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    return train_main(args)


main()
if job_args is not None:
    sys.exit(train_job(job_args))
