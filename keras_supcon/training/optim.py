"""Optimizers with linear warm-up followed by cosine decay."""

import keras

from keras_supcon.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")


def warmup_cosine(lr, total_steps, warmup_fraction=0.1):
    """Linear warm-up from 0 to ``lr`` over ``warmup_fraction`` of the steps, then cosine to 0."""
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0; got {lr}")
    if not 0 <= warmup_fraction < 1:
        raise ConfigError(f"warm-up fraction must be in [0, 1); got {warmup_fraction}")
    total_steps = max(int(total_steps), 1)
    warmup = int(round(warmup_fraction * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else lr,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(name, lr, *, total_steps, weight_decay=0.0, warmup_fraction=0.1,
                   clipnorm=None):
    """``adam`` or ``sgd`` (momentum 0.9), decoupled weight decay, warm-up + cosine LR;
    ``clipnorm``: the gradients are rescaled so that their global L2 norm is at most this."""
    schedule = warmup_cosine(lr, total_steps, warmup_fraction)
    if weight_decay < 0:
        raise ConfigError(f"weight decay must be >= 0; got {weight_decay}")
    if clipnorm is not None and not clipnorm > 0:
        raise ConfigError(f"gradient clipping norm must be > 0; got {clipnorm}")
    kw = dict(weight_decay=weight_decay or None, global_clipnorm=clipnorm)
    if name == "adam":
        return keras.optimizers.Adam(schedule, **kw)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, **kw)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def steps_per_epoch(num_examples, batch_size, drop_remainder=False):
    """Batches in one pass over ``num_examples`` (at least 1); the last, partial batch
    counts unless ``drop_remainder``."""
    full, partial = divmod(num_examples, batch_size)
    return max(full + (0 if drop_remainder or not partial else 1), 1)


def build_before_fit(model, data_batch):
    """Create the variables of ``model``'s compiled optimizer, losses and metrics before
    ``fit`` traces its training step; ``data_batch``: one batch, or its ``tf.TensorSpec``
    structure (a dataset's ``element_spec``).

    Keras' TensorFlow trainer without a distribution strategy creates them while tracing
    the step, and a ``tf.function`` that creates variables on its first trace is traced a
    second time, without them: every stage of every job paid for two traces of its
    training step (about 1 s on the small network, several on the application backbones).
    The JAX trainer, and the TensorFlow one under a strategy, already build them first,
    with the same Keras method; that is what is called here, in the model's strategy
    scope."""
    if keras.backend.backend() != "tensorflow":
        return
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=data_batch)
