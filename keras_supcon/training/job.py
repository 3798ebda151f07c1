"""The whole job of ``python -m keras_supcon.train``, as one library call: :func:`train`.

Stages (each resumable from its last per-epoch checkpoint; :mod:`.stages`):

1. ``pretrain``: encoder + projection head trained with a representation loss on
   augmented views of each image: ``supcon``, ``simclr``, ``npairs``,
   ``triplet`` (any number of views) or ``barlow`` (exactly two);
2. ``linear``: encoder frozen, the ``probe`` classifier (a linear softmax, or a
   one-hidden-layer MLP) fitted on cached features or trained on images;

or, for the end-to-end losses, one ``ce`` stage training the classifier end to
end: ``ce`` (cross-entropy), ``center`` (cross-entropy + ``center_weight`` x
center loss on the encoder features), ``supcon+ce`` (cross-entropy on every view
+ ``supcon_weight`` x SupCon on the projection head, Gunel et al. 2021). Then test
metrics (classification and embedding quality), figures and a SavedModel export,
all into the run directory. :func:`fine_tune_linear` / :func:`fine_tune_nn` run
the probe stage alone on any encoder.
"""

import dataclasses
import logging
import time
from dataclasses import asdict

import keras

from keras_supcon.data import DataSplits, supervised_batches
from keras_supcon.data.pipeline import check_contrastive_batch_size
from keras_supcon.errors import ConfigError
from keras_supcon.evaluation import classification_metrics, embedding_metrics, predict
from keras_supcon.evaluation.figures import plot_curves, save_evaluation_figures
from keras_supcon.evaluation.metrics import EVAL_BATCH
from keras_supcon.runs.callbacks import read_history
from keras_supcon.runs.export import check_saved_model, export_saved_model
from keras_supcon.runs.rundir import RunDir, default_run_dir, open_run
from keras_supcon.training import build
from keras_supcon.training.distribute import (
    check_global_batch,
    distribution_scope,
    is_chief,
    precision_policy,
    process_local,
)
from keras_supcon.training.settings import (
    END_TO_END_LOSSES,
    VIEW_LOSSES,
    TrainConfig,
    augmentation_record,
    load_data,
)
from keras_supcon.training.stages import (
    PROBE_FILE,
    fit_probe,
    pretrain,
    train_classifier,
    train_joint,
)

log = logging.getLogger(__name__)


def train(config=None, *, resume=False, overwrite=False, **settings):
    """Run the whole job and return the test metrics (also in ``RUN_DIR/metrics.json``).

    ``train(TrainConfig(...))`` or ``train(backbone="resnet50", epochs=2, ...)``.
    ``resume=True`` continues the run in ``config.out`` with its saved settings.
    """
    config = dataclasses.replace(config or TrainConfig(), **settings)
    config, run = open_run(config, resume=resume, overwrite=overwrite)
    started = time.time()
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF work.
    with distribution_scope(config.strategy) as replicas:
        check_global_batch(config.batch_size, replicas)
        data = load_data(config)
        if config.loss in VIEW_LOSSES:
            check_contrastive_batch_size(config.batch_size, data.sizes["train"])
        run.begin(asdict(config), resume=resume, augmentation=augmentation_record(config, data))
        keras.utils.set_random_seed(config.seed)
        keras.mixed_precision.set_global_policy(precision_policy(config.mixed_precision))
        classifier = _train_stages(config, data, run)
    # Evaluation and export run outside the strategy, on this process's devices.
    with process_local(classifier) as classifier:
        metrics = evaluate_run(config, data, run, classifier)
    metrics["replicas"] = replicas
    return run.finish(metrics, started)


def _train_stages(config, data, run):
    """The stages not done yet; returns the trained classifier."""
    if config.loss in END_TO_END_LOSSES:
        return run.stage("ce", lambda: _train_end_to_end(config, data, run), "classifier.keras")

    def pretrained():
        encoder = build.encoder(config)
        pretrain(config, data, run, encoder)
        return encoder

    encoder = None  # once the probe is done, the classifier holds the encoder
    if not run.stage_done("linear"):
        encoder = run.stage("pretrain", pretrained, "encoder.keras")
    return run.stage("linear", lambda: probe_stage(config, data, run, encoder),
                     "classifier.keras")


def _train_end_to_end(config, data, run):
    """Stage ``ce``: the classifier trained end to end (CE, center loss, or CE + SupCon);
    its encoder is saved as ``encoder.keras`` too."""
    encoder = build.encoder(config)
    classifier = build.classifier(config, encoder, data.num_classes)
    if config.loss == "supcon+ce":
        train_joint(config, data, run, classifier, encoder)
    else:
        train_classifier(config, data, run, classifier, "ce", config.epochs, config.lr)
    run.save_model(encoder, "encoder.keras")
    return classifier


def probe_stage(config, data, run, encoder):
    """Stage ``linear`` on this process's devices (when there are several processes)."""
    with process_local(encoder) as encoder:
        return fit_probe(config, data, run, encoder)


def fine_tune_linear(encoder, data="digits", *, out=None, overwrite=False, **settings):
    """A linear softmax classifier on the frozen pre-trained ``encoder``.

    ``encoder``: a Keras model (or ``.keras`` file) mapping raw images ``[B, S, S, 3]``
    in [0, 255] to features, e.g. a run's ``encoder.keras``. ``data``: a
    :class:`~keras_supcon.data.DataSplits` or a ``--dataset`` string. ``settings``:
    :class:`TrainConfig` fields (``linear_epochs``, ``linear_lr``, ``batch_size``,
    ``l2``, ``early_stopping``, ...). Trains into run directory ``out`` (default: a
    new folder under ``runs/``) and returns ``(classifier, test metrics)``.
    """
    return _fine_tune(encoder, data, "linear", out, overwrite, settings)


def fine_tune_nn(encoder, data="digits", *, hidden=512, out=None, overwrite=False, **settings):
    """:func:`fine_tune_linear` with one hidden ReLU layer of width ``hidden`` (an MLP probe)."""
    return _fine_tune(encoder, data, "nn", out, overwrite, dict(settings, probe_hidden=hidden))


def _fine_tune(encoder, data, probe, out, overwrite, settings):
    if not isinstance(encoder, keras.Model):
        encoder = keras.models.load_model(encoder)
    size = encoder.input_shape[1]
    if len(encoder.input_shape) != 4 or encoder.input_shape[-1] != 3 or size is None:
        raise ConfigError(f"the encoder must take images [B, S, S, 3]; it takes "
                          f"{encoder.input_shape}")
    if not isinstance(data, DataSplits):  # a --dataset string (or path): the settings' dataset
        data = str(data)
        if str(settings.get("dataset", data)) != data:
            raise ConfigError(f"give the data once: data={data!r} and "
                              f"dataset={settings['dataset']!r}")
        settings = dict(settings, dataset=data)
    config = TrainConfig(**{**settings, "loss": "supcon", "probe": probe, "image_size": None})
    config.out = out or str(default_run_dir(None, "fine-tune", probe))
    config.validate()
    config.image_size = int(size)  # the encoder's, whatever its backbone
    started = time.time()
    if not isinstance(data, DataSplits):
        data = load_data(config)
    run = RunDir.prepare(config.out, overwrite=overwrite)
    run.begin(asdict(config), resume=False, augmentation=augmentation_record(config, data))
    keras.utils.set_random_seed(config.seed)
    classifier = run.stage("linear", lambda: probe_stage(config, data, run, encoder),
                           "classifier.keras")
    test_ds = supervised_batches(data.test, config.image_size, EVAL_BATCH)
    probs, labels = predict(classifier, test_ds, config.verbose)
    metrics = classification_metrics(labels, probs, data.class_names)
    metrics.update(dataset=data.name, probe=probe)
    metrics["embedding"] = _embedding_block(config, data, encoder, test_ds, probs)[0]
    return classifier, run.finish(metrics, started)


def evaluate_run(config, data, run, classifier):
    """Test metrics, embedding quality, figures and SavedModel export of a trained
    classifier (its encoder is the layer ``build.encoder_name(config)``). In a
    multi-process run, only process 0 writes the figures and the export."""
    encoder = classifier.get_layer(build.encoder_name(config))
    test_ds = supervised_batches(data.test, config.image_size, EVAL_BATCH)
    probs, labels = predict(classifier, test_ds, config.verbose)
    metrics = classification_metrics(labels, probs, data.class_names)
    metrics.update(dataset=data.name, backbone=config.backbone, loss=config.loss,
                   split_sizes=data.sizes)
    if run.file(PROBE_FILE).exists():
        probe = run.read_json(PROBE_FILE)
        metrics["probe"] = {k: probe[k] for k in ("protocol", "C", "epoch", "val_accuracy")
                            if k in probe}
    metrics["embedding"], embeddings, emb_labels = _embedding_block(config, data, encoder,
                                                                    test_ds, probs)
    if is_chief():  # the figures and the export: process 0's run directory is the result
        _write_outputs(config, data, run, classifier, metrics, embeddings, emb_labels,
                       next(iter(test_ds))[0][:32])
    return metrics


def _embedding_block(config, data, encoder, test_ds, probs):
    """``(metrics.json's embedding block, test embeddings, their labels)`` of ``encoder``,
    the classifier's test predictions ``probs`` paired with the kNN vote (a warning when
    the classifier is significantly below it)."""
    embeddings, emb_labels = predict(encoder, test_ds, config.verbose)
    train_emb, train_labels = predict(
        encoder, supervised_batches(data.train, config.image_size, EVAL_BATCH), config.verbose)
    block = embedding_metrics(train_emb, train_labels, embeddings, emb_labels,
                              predictions=probs.argmax(axis=1))
    _warn_below_knn(block["classifier_vs_knn"])
    return block, embeddings, emb_labels


def _warn_below_knn(pair, alpha=0.05):
    """A warning when the classifier is significantly below its own encoder's kNN vote: its
    head reads the features worse than 20 neighbours do. Under-fitted (too few epochs, a
    learning rate) or over-fitted (a long end-to-end run: ce at 160 epochs on the CIFAR
    subset, whose head was below a linear probe fitted on its own frozen features too;
    docs/results.md)."""
    if pair["knn_only"] > pair["classifier_only"] and pair["mcnemar_p"] < alpha:
        log.warning("the classifier is below its encoder's kNN vote: %d test images only the "
                    "kNN vote gets right, %d only the classifier (McNemar p = %.2g); its head "
                    "under- or over-fits the features (experiments/head_vs_knn.py compares it "
                    "with a linear probe fitted on them)",
                    pair["knn_only"], pair["classifier_only"], pair["mcnemar_p"])


def _write_outputs(config, data, run, classifier, metrics, embeddings, emb_labels, sample):
    """The run's figures, and its SavedModel checked against the classifier on ``sample``."""
    title = (f"{data.name} | {config.backbone} | {config.loss} | "
             f"test accuracy {metrics['accuracy']:.3f}")
    save_evaluation_figures(run, metrics, title, curves=plot_curves(read_history(run), title),
                            codes=embeddings, labels=emb_labels, class_names=data.class_names,
                            what="test encoder embeddings", seed=config.seed)
    with run.atomic_path("saved_model") as tmp:
        export_saved_model(classifier, tmp)
    diff = check_saved_model(run.file("saved_model"), classifier, sample)
    metrics["saved_model_max_abs_diff"] = diff
    if not diff < 1e-4:
        raise RuntimeError(f"exported SavedModel disagrees with the classifier (max |diff| {diff})")
