"""Pseudo-labelling (Lee 2013), and the classic labelled:unlabelled ratio study.

1. A *teacher* classifier is trained with cross-entropy on the labelled images.
2. It predicts the unlabelled images; predictions whose softmax confidence is at
   least ``threshold`` (0.99 by default) become pseudo-labels.
3. A *student* (same architecture, fresh initialisation, same budget) is trained
   on the labelled plus the pseudo-labelled images. With ``rounds > 1`` the
   student becomes the teacher and steps 2-3 repeat.

The unlabelled images come from the data set's own unlabelled split (STL-10's
``unlabelled`` through TFDS) or, for ``.npz`` / folder / digits data, from the
training split: ``labelled`` images keep their labels (chosen per class), the
rest form a pool whose labels are hidden from training and only used to
report how accurate the pseudo-labels were. For ratio ``1:r`` the student sees
``round(r * labelled)`` images of that pool; ``1:0`` is the teacher itself.
Validation (model selection) and test splits are the usual ones.

Every classifier is a stage of one run directory (``teacher``,
``student-1to2-round1``, ...), resumable like the training job; results are
written after each stage to ``pseudo_label.json`` and, at the end, as the table
``pseudo_label.md`` and the figure ``pseudo_label.png``.
"""

import dataclasses
import logging
import math
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.data.sources import load_unlabelled_split, split_indices
from keras_supcon.errors import ConfigError, DataError
from keras_supcon.evaluation import classification_metrics, predict
from keras_supcon.evaluation.tables import markdown_table
from keras_supcon.models import build_classifier, build_encoder
from keras_supcon.runs.rundir import CONFIG_FILE, open_run
from keras_supcon.training.distribute import precision_policy
from keras_supcon.training.run import TrainConfig, train_classifier

log = logging.getLogger(__name__)

RATIOS = (0.0, 0.4, 1.0, 2.0, 10.0)  # unlabelled images per labelled image
UNLABELLED_SOURCES = ("auto", "split", "holdout")
PSEUDO_LOSSES = ("ce", "center")  # classifiers trained end to end on (pseudo-)labelled images
RESULTS_FILE = "pseudo_label.json"


def parse_ratios(ratios):
    """``"1:0,1:0.4,1:1"`` (or ``"0,0.4,1"``, or a list of numbers) -> sorted floats."""
    if isinstance(ratios, str):
        items = [item.strip() for item in ratios.split(",") if item.strip()]
    else:
        items = list(ratios or [])
    if not items:
        raise ConfigError("--ratios is empty; e.g. --ratios 1:0,1:0.4,1:1,1:2,1:10")
    values = []
    for item in items:
        text = str(item)
        left, _, right = text.rpartition(":")
        try:
            if left and float(left) != 1:
                raise ValueError
            value = float(right)
        except ValueError:
            raise ConfigError(f"--ratios: {text!r} is not a labelled:unlabelled ratio "
                              "like 1:0.4") from None
        if not value >= 0 or math.isinf(value):
            raise ConfigError(f"--ratios: {text!r}: the unlabelled part must be >= 0")
        values.append(value)
    if len(set(values)) != len(values):
        raise ConfigError(f"--ratios: a ratio is repeated in {', '.join(map(str, items))}")
    return tuple(sorted(values))


def ratio_label(ratio):
    return f"1:{ratio:g}"


def check_pseudo_settings(threshold, rounds, unlabelled, labelled):
    if not 0 < threshold <= 1:
        raise ConfigError(f"confidence threshold must be in (0, 1]; got {threshold}")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1; got {rounds}")
    if unlabelled not in UNLABELLED_SOURCES:
        raise ConfigError(f"unknown unlabelled source {unlabelled!r}; "
                          f"choose one of: {', '.join(UNLABELLED_SOURCES)}")
    if labelled is not None and labelled < 1:
        raise ConfigError(f"labelled must be >= 1; got {labelled}")


def _labels_of(ds):
    return np.concatenate([y.numpy().reshape(-1) for y in ds.map(lambda x, y: y).batch(4096)])


def _select(ds, mask):
    """The elements of ``ds`` whose position is True in ``mask`` (order kept)."""
    mask = tf.constant(mask, tf.bool)

    def selected(i, _):
        return mask[i]

    def element(_, ex):
        return ex

    return ds.enumerate().filter(selected).map(element)


def split_pools(data, spec, *, labelled, max_ratio, source="auto", data_dir=None, seed=0):
    """``(labelled ds, n, unlabelled pool ds, pool size, labels known)`` of ``data``.

    ``source``: ``split`` (the data set's unlabelled split), ``holdout`` (part of
    the training split, labels hidden), ``auto`` (the split if there is one).
    """
    split = None if source == "holdout" else load_unlabelled_split(spec, data_dir=data_dir)
    if split is not None:
        train = data.train
        n_train = data.sizes["train"]
        if labelled is not None and labelled < n_train:
            train = _select(train, _labelled_mask(_labels_of(train), labelled, seed))
            n_train = labelled
        return train, n_train, split, None, False
    if source == "split":
        raise DataError(f"{data.name} has no unlabelled split; use --unlabelled holdout to "
                        "hold out part of the training images as unlabelled")
    labels = _labels_of(data.train)
    n = len(labels)
    if labelled is None:  # as many as the largest ratio leaves room for
        labelled = int(n // (1 + max_ratio))
    needed = int(round(max_ratio * labelled))
    if labelled < data.num_classes or labelled + needed > n:
        raise DataError(
            f"cannot hold out unlabelled images: {data.name} has {n} training images, "
            f"and {labelled} labelled + {needed} unlabelled (ratio {ratio_label(max_ratio)}) "
            f"are needed, with at least one labelled image per class "
            f"({data.num_classes}); lower --labelled or the largest ratio")
    mask = _labelled_mask(labels, labelled, seed)
    pool_idx = np.flatnonzero(~mask)
    np.random.default_rng(seed).shuffle(pool_idx)  # pool[:k] is a random k-subset
    return _select(data.train, mask), labelled, data.train, (pool_idx, labels), True


def _labelled_mask(labels, count, seed):
    """``count`` positions, stratified by class where possible."""
    mask = np.zeros(len(labels), bool)
    if count >= len(labels):
        mask[:] = True
        return mask
    chosen, _ = split_indices(labels, len(labels) - count, seed)
    mask[chosen] = True
    return mask


def _unlabelled_for(pool_ds, pool, count):
    """``(ds of (image, true label or -1), size)``: the first ``count`` of the pool."""
    if pool is None:  # an unlabelled split
        ds = pool_ds.take(count)
        n = int(ds.cardinality())
        if n < 0:
            n = int(ds.reduce(0, lambda c, _: c + 1))
        return ds, n
    pool_idx, labels = pool
    mask = np.zeros(len(labels), bool)
    mask[pool_idx[:count]] = True
    return _select(pool_ds, mask), int(mask.sum())


def pseudo_labels(classifier, ds, image_size, threshold):
    """Predict ``ds`` of ``(image, true label or -1)``: ``(keep mask, predicted labels,
    true labels)``; kept = softmax confidence >= ``threshold``."""
    probs, true = predict(classifier, supervised_batches(ds, image_size, 256))
    return probs.max(axis=1) >= threshold, probs.argmax(axis=1), true


def _with_pseudo_labels(ds, keep, predicted):
    keep = tf.constant(keep, tf.bool)
    predicted = tf.constant(predicted, tf.int64)

    def kept(i, _):
        return keep[i]

    def relabelled(i, ex):
        return ex[0], predicted[i]

    return ds.enumerate().filter(kept).map(relabelled)


def _new_classifier(config, num_classes):
    keras.utils.set_random_seed(config.seed)
    encoder = build_encoder(config.backbone, config.image_size, config.weights)
    return build_classifier(encoder, num_classes, l2=config.l2)


def _train_stage(config, data, run, stage, train_ds, n_train):
    """Train (or load, if done) the classifier of ``stage`` on ``train_ds``."""
    def train():
        splits = dataclasses.replace(
            data, train=train_ds.apply(tf.data.experimental.assert_cardinality(n_train)),
            sizes={**data.sizes, "train": n_train})
        classifier = _new_classifier(config, data.num_classes)
        train_classifier(config, splits, run, classifier, stage, config.epochs, config.lr)
        return classifier

    return run.stage(stage, train, f"{stage}.keras")


def _test_metrics(config, data, classifier):
    probs, labels = predict(classifier, supervised_batches(data.test, config.image_size, 256))
    m = classification_metrics(labels, probs, data.class_names)
    return {k: m[k] for k in ("accuracy", "f1_macro", "precision_macro", "recall_macro")}


def _check_study(config, study):
    if config.loss not in PSEUDO_LOSSES:
        raise ConfigError(f"pseudo-labelling trains classifiers end to end on images: loss "
                          f"must be {' or '.join(PSEUDO_LOSSES)}; got {config.loss!r}")
    if config.strategy != "none":
        raise ConfigError("pseudo-labelling runs on one device; --strategy is for "
                          "keras_supcon.train")
    check_pseudo_settings(threshold=study["threshold"], rounds=study["rounds"],
                          unlabelled=study["unlabelled"], labelled=study["labelled"])


def run_pseudo_labelling(config=None, *, labelled=None, ratios=RATIOS, threshold=0.99, rounds=1,
                         unlabelled="auto", resume=False, overwrite=False, **settings):
    """The labelled:unlabelled study; returns ``{"rows": [...], "report": path}``.

    ``config`` / ``settings``: the :class:`TrainConfig` of every classifier
    (``loss`` ``ce`` or ``center``; backbone, epochs, batch size, ...).
    ``labelled``: number of labelled images (default: the most that leaves room
    for the largest ratio). ``ratios``: ``"1:0,1:0.4,..."`` or numbers.
    """
    config = dataclasses.replace(config or TrainConfig(loss="ce"), **settings)
    study = {"labelled": labelled, "ratios": list(parse_ratios(ratios)), "threshold": threshold,
             "rounds": rounds, "unlabelled": unlabelled}
    if resume:  # the settings and the study as they were started
        config, run = open_run(config, resume=True)
        study = run.read_json(CONFIG_FILE)["pseudo_labelling"]
    elif config.out is None:
        name = Path(str(config.dataset)).stem or "data"
        config.out = str(Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-pseudo-{name}")
    _check_study(config, study)
    config.validate()
    ratios = study["ratios"]
    data = load_dataset(config.dataset, data_dir=config.data_dir,
                        val_fraction=config.val_fraction, seed=config.seed)
    labelled_ds, n_labelled, pool_ds, pool, known = split_pools(
        data, config.dataset, labelled=study["labelled"], max_ratio=max(ratios),
        source=study["unlabelled"], data_dir=config.data_dir, seed=config.seed)
    if not resume:  # (data errors surface before a new run writes anything)
        config, run = open_run(config, overwrite=overwrite)
        run.start(asdict(config), pseudo_labelling=study)
    keras.mixed_precision.set_global_policy(precision_policy(config.mixed_precision))
    log.info("pseudo-labelling on %s: %d labelled images, ratios %s, threshold %g",
             data.name, n_labelled, ", ".join(map(ratio_label, ratios)), study["threshold"])

    results = run.read_json(RESULTS_FILE) if run.file(RESULTS_FILE).exists() else {}
    teacher = _train_stage(config, data, run, "teacher", labelled_ds, n_labelled)
    if "teacher" not in results:
        results["teacher"] = {"ratio": 0.0, "round": 0, "unlabelled": 0, "kept": 0,
                              "pseudo_label_accuracy": None, "train_images": n_labelled,
                              "test": _test_metrics(config, data, teacher)}
        run.write_json(RESULTS_FILE, results)
    rows = [results["teacher"]] if 0.0 in ratios else []
    for ratio in (r for r in ratios if r > 0):
        unlabelled_ds, n_unlabelled = _unlabelled_for(pool_ds, pool,
                                                      int(round(ratio * n_labelled)))
        current = teacher
        for k in range(1, study["rounds"] + 1):
            stage = f"student-1to{ratio:g}-round{k}"
            if stage not in results or not run.stage_done(stage):
                keep, predicted, true = pseudo_labels(current, unlabelled_ds,
                                                      config.image_size, study["threshold"])
                kept = int(keep.sum())
                accuracy = (float((predicted[keep] == true[keep]).mean()) if known and kept
                            else None)
                log.info("%s: %d of %d unlabelled images kept (pseudo-label accuracy %s)",
                         stage, kept, n_unlabelled, accuracy)
                train_ds = labelled_ds.concatenate(
                    _with_pseudo_labels(unlabelled_ds, keep, predicted))
                current = _train_stage(config, data, run, stage, train_ds, n_labelled + kept)
                results[stage] = {"ratio": ratio, "round": k, "unlabelled": n_unlabelled,
                                  "kept": kept, "pseudo_label_accuracy": accuracy,
                                  "train_images": n_labelled + kept,
                                  "test": _test_metrics(config, data, current)}
                run.write_json(RESULTS_FILE, results)
            else:
                current = keras.models.load_model(run.file(f"{stage}.keras"))
            rows.append(results[stage])
    report = write_pseudo_report(run, rows, study, config, data.name, n_labelled)
    run.mark_finished()
    return {"rows": rows, "report": str(report), "run_dir": str(run.path)}


def pseudo_table(rows, threshold):
    header = ["labelled:unlabelled", "round", "unlabelled images",
              f"kept (conf. >= {threshold:g})", "pseudo-label acc.", "train images",
              "F1", "Accuracy", "Precision", "Recall"]
    body = []
    for r in rows:
        t = r["test"]
        kept = f"{r['kept']} ({r['kept'] / r['unlabelled']:.1%})" if r["unlabelled"] else "—"
        acc = r["pseudo_label_accuracy"]
        body.append([ratio_label(r["ratio"]), str(r["round"]) if r["round"] else "—",
                     str(r["unlabelled"]), kept, "—" if acc is None else f"{acc:.4f}",
                     str(r["train_images"])] +
                    [f"{t[k]:.4f}" for k in ("f1_macro", "accuracy", "precision_macro",
                                             "recall_macro")])
    return markdown_table(header, body)


def write_pseudo_report(run, rows, study, config, dataset, n_labelled):
    from keras_supcon.evaluation.figures import new_figure

    last = {}
    for r in rows:  # the last round of each ratio
        last[r["ratio"]] = r
    final = list(last.values())
    fig, ax = new_figure(figsize=(6.5, 4))
    x = np.arange(len(final))
    ax.plot(x, [r["test"]["accuracy"] for r in final], "o-", label="test accuracy")
    ax.plot(x, [r["test"]["f1_macro"] for r in final], "s--", label="test macro F1")
    kept = [r["kept"] / r["unlabelled"] if r["unlabelled"] else np.nan for r in final]
    ax.plot(x, kept, "^:", label=f"kept fraction (conf. >= {study['threshold']:g})")
    ax.set(xticks=x, xticklabels=[ratio_label(r["ratio"]) for r in final],
           xlabel="labelled : unlabelled", ylim=(0, 1),
           title=f"Pseudo-labelling on {dataset}: {n_labelled} labelled, "
                 f"{config.backbone}, {config.epochs} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save_figure(fig, "pseudo_label.png")
    text = "\n".join([
        f"# Pseudo-labelling: {dataset}", "",
        f"{n_labelled} labelled images; backbone {config.backbone}, loss {config.loss}, "
        f"{config.epochs} epochs per classifier, batch {config.batch_size}, lr {config.lr}, "
        f"seed {config.seed}; confidence threshold {study['threshold']:g}, "
        f"{study['rounds']} round(s). Test metrics are macro averages.", "",
        pseudo_table(rows, study["threshold"]), "",
        "![pseudo-labelling](pseudo_label.png)", ""])
    run.write_text("pseudo_label.md", text)
    return run.file("pseudo_label.md")
