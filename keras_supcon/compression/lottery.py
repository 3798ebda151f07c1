"""Lottery-ticket pruning (Frankle & Carbin 2019; rewinding: Frankle et al. 2020).

Train the dense network from its initialisation ``theta_0``; prune the
smallest-magnitude weights (per layer or globally); rewind the surviving weights
to ``theta_0`` (or to their values after an early epoch ``k``); retrain with the
mask fixed. With ``rounds > 1`` this repeats, each round pruning to
``1 - (1 - s) ** (r / rounds)`` of the surviving weights' layers, so the last round
reaches ``s``. The comparison it reports beside the ticket is one-shot magnitude
pruning of the same trained network, fine-tuned for the same number of epochs.

Runs in Keras 3 (no tfmot needed: the mask is fixed, see
:func:`~keras_supcon.compression.masks.fixed_masks`), with the training settings
of the run being compressed.
"""

import logging

import keras

from keras_supcon.compression.masks import fixed_masks, magnitude_masks
from keras_supcon.compression.prune import kernels
from keras_supcon.errors import ConfigError
from keras_supcon.training import build
from keras_supcon.training.stages import train_classifier

log = logging.getLogger(__name__)


def round_sparsities(sparsity, rounds):
    """Sparsity after each of ``rounds`` rounds of iterative pruning to ``sparsity``."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1; got {rounds}")
    return [1 - (1 - sparsity) ** ((r + 1) / rounds) for r in range(rounds)]


def _kernel_values(model, names):
    return {n: keras.ops.convert_to_numpy(v) for n, v in kernels(model, names).items()}


def lottery_ticket(config, data, run, names, *, sparsity, scope="global", rounds=1,
                   rewind_epoch=0, train_epochs=None, retrain_epochs=None, lr=None):
    """Find a winning ticket of the run's classifier architecture.

    ``config``: the run's :class:`~keras_supcon.training.TrainConfig` (backbone,
    image size, optimizer, batch size); ``data``: its :class:`DataSplits`;
    ``run``: the :class:`RunDir` the stages checkpoint into; ``names``: the
    prunable layers. Returns ``{"dense": model, "one_shot": model, "ticket": model,
    "rounds": [sparsity per round]}``, all Keras 3 classifiers.
    """
    train_epochs = train_epochs or config.epochs
    retrain_epochs = retrain_epochs or train_epochs
    lr = lr or config.lr
    if not 0 <= rewind_epoch < train_epochs:
        raise ConfigError(f"rewind epoch must be in [0, {train_epochs}) (0: initialisation); "
                          f"got {rewind_epoch}")
    keras.utils.set_random_seed(config.seed)

    def fresh():  # the run's classifier architecture, from the run's builder
        return build.new_classifier(config, data.num_classes)

    model = fresh()
    rewind = {"weights": model.get_weights()}  # theta_0, or theta_k after epoch k
    if rewind_epoch:
        def keep(epoch, logs):
            if epoch + 1 == rewind_epoch:
                rewind["weights"] = model.get_weights()
        run_callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=keep)]
    else:
        run_callbacks = []
    log.info("lottery ticket: dense training, %d epochs", train_epochs)
    train_classifier(config, data, run, model, "dense", train_epochs, lr,
                     extra_callbacks=run_callbacks)
    dense_weights = model.get_weights()
    trained = _kernel_values(model, names)

    one_shot = fresh()
    one_shot.set_weights(dense_weights)
    with fixed_masks(one_shot, magnitude_masks(trained, sparsity, scope=scope)):
        log.info("one-shot magnitude pruning to %.2f, fine-tuning %d epochs", sparsity,
                 retrain_epochs)
        train_classifier(config, data, run, one_shot, "one_shot", retrain_epochs, lr)

    ticket = fresh()
    schedule = round_sparsities(sparsity, rounds)
    for r, s in enumerate(schedule, 1):
        masks = magnitude_masks(trained, s, scope=scope)
        ticket.set_weights(rewind["weights"])
        with fixed_masks(ticket, masks):
            log.info("lottery round %d/%d: sparsity %.3f, rewound to %s, retraining %d epochs",
                     r, rounds, s, f"epoch {rewind_epoch}" if rewind_epoch else "init",
                     retrain_epochs)
            train_classifier(config, data, run, ticket, f"ticket_round{r}", retrain_epochs, lr)
        trained = _kernel_values(ticket, names)
    return {"dense": model, "one_shot": one_shot, "ticket": ticket, "rounds": schedule}
