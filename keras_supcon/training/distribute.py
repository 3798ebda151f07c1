"""Training on several devices or machines with the engines Keras already has.

- ``"mirrored"``: ``tf.distribute.MirroredStrategy``, every GPU of this machine
  (TensorFlow backend);
- ``"multiworker"``: ``tf.distribute.MultiWorkerMirroredStrategy``, every GPU of
  every machine named in ``TF_CONFIG`` (TensorFlow backend). Keras 3's
  ``model.fit`` does not run under it (keras-team/keras#20585: fit's symbolic
  build converts the per-replica batch to a tensor and fails; reproduced here
  with two workers on localhost), so the option stops with that explanation
  instead of a traceback, until Keras fixes it;
- ``"data-parallel"``: ``keras.distribution.DataParallel`` over every JAX device
  (JAX backend); on several machines, ``keras.distribution.initialize()`` first
  joins the processes named by ``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``.

The batch size stays the global batch (the ``tf.data`` batch), as in Keras;
each replica gets ``batch_size / replicas`` images. Every loss sees the global
batch (see :mod:`keras_supcon.losses.replicas`), so 4 devices x 256 train like
one batch of 1024. BatchNorm statistics stay per replica (Keras' default, as in the
SupCon reference implementation).
"""

import contextlib
import functools
import logging

import keras

from keras_supcon.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multiworker", "data-parallel")
MULTIWORKER_BLOCKED = (
    "--strategy multiworker: Keras 3 model.fit does not run under "
    "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585); for several "
    "machines use KERAS_BACKEND=jax with --strategy data-parallel (see docs/performance.md)")
TF_STRATEGIES = ("mirrored", "multiworker")


def check_strategy(name, backend=None):
    """A one-line ConfigError if ``name`` is unknown or needs the other backend."""
    check_choice(name, STRATEGIES, "strategy")
    backend = backend or keras.backend.backend()
    if name in TF_STRATEGIES and backend != "tensorflow":
        raise ConfigError(f"--strategy {name} is tf.distribute and needs the TensorFlow "
                          f"backend (this is {backend}; on JAX use --strategy data-parallel)")
    if name == "multiworker":
        raise ConfigError(MULTIWORKER_BLOCKED)
    if name == "data-parallel" and backend != "jax":
        raise ConfigError(f"--strategy data-parallel is keras.distribution and needs "
                          f"KERAS_BACKEND=jax (this is {backend}; on TensorFlow use "
                          f"--strategy mirrored)")
    return name


@contextlib.contextmanager
def distribution_scope(name):
    """Build and train inside this scope; yields the number of replicas.

    Enter it before any other TensorFlow work of the program: a
    ``MultiWorkerMirroredStrategy`` must be created at start-up.
    """
    check_strategy(name)
    if name == "none":
        yield 1
    elif name in TF_STRATEGIES:
        strategy = mirrored_strategy()
        log.info("strategy %s: %d replicas", name, strategy.num_replicas_in_sync)
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        import os

        if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
            _join_processes()
        previous = keras.distribution.distribution()
        distribution = keras.distribution.DataParallel()
        keras.distribution.set_distribution(distribution)
        replicas = len(distribution.device_mesh.devices.reshape(-1))
        log.info("strategy data-parallel: %d devices", replicas)
        try:
            yield replicas
        finally:
            keras.distribution.set_distribution(previous)


def _join_processes():
    """``keras.distribution.initialize()`` once per process: a second job in the same
    process (a notebook, a study) joins the processes already joined."""
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()


@functools.cache
def mirrored_strategy():
    """The process's one ``tf.distribute.MirroredStrategy``.

    Created once and reused: a second ``MirroredStrategy`` in the same process
    numbers its collective operations from the same start as the first, and
    TensorFlow's collective executor then matches a new all-reduce with an
    old one of another shape ("Shape mismatch in the collective instance 100",
    seen here when a second ``fit`` with a different loss ran in one process).
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def multi_process():
    """Whether this is one of several JAX processes (``keras.distribution.initialize``)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


def is_chief():
    """Whether this process writes a run's figures and SavedModel: process 0 of a
    multi-process run (its run directory is the result), the only process otherwise.
    The others still compute and write the same metrics and their own checkpoints (for
    ``--resume``): as in ``tf.distribute``, where only the chief writes the model."""
    if not multi_process():
        return True
    import jax

    return jax.process_index() == 0


@contextlib.contextmanager
def process_local(model):
    """Yields ``model`` to run inference and small fits on this process's own
    devices: in a multi-process run, a copy of it outside the distribution;
    elsewhere ``model`` itself, and nothing changes.

    Across processes ``DataParallel`` shards every batch over all processes'
    devices, and ``model.predict`` then stops on outputs it cannot fetch
    ("Fetching value for `jax.Array` that spans non-addressable (non process
    local) devices is not possible"). The probe, the evaluation and the export
    need every output on this process: inside, the distribution is lifted and
    the copy holds the weights (replicated, so every process has them) in
    process-local arrays; models built inside are process-local too.
    """
    if not multi_process():
        yield model
        return
    weights = model.get_weights()
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        local = keras.models.clone_model(model)
        local.set_weights(weights)
        yield local
    finally:
        keras.distribution.set_distribution(previous)


def has_gpu():
    """Whether the Keras backend sees a GPU."""
    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def precision_policy(mixed):
    """The Keras dtype policy of ``--mixed-precision``: ``mixed_float16`` on a GPU,
    ``mixed_bfloat16`` elsewhere (CPUs have bfloat16 kernels, not float16 ones:
    float16 ran about 5x slower than float32 on this project's CPU), else ``float32``."""
    if not mixed:
        return "float32"
    return "mixed_float16" if has_gpu() else "mixed_bfloat16"


def check_global_batch(batch_size, replicas):
    """The global batch must split evenly over the replicas."""
    if replicas > 1 and batch_size % replicas:
        raise ConfigError(f"batch size {batch_size} does not split evenly over "
                          f"{replicas} replicas; use a multiple of {replicas}")
