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
import time
from dataclasses import asdict

import keras
import tensorflow as tf

from keras_supcon.data import supervised_batches
from keras_supcon.data.pools import split_pools, unlabelled_subset, with_pseudo_labels
from keras_supcon.errors import ConfigError
from keras_supcon.evaluation import classification_metrics, predict
from keras_supcon.evaluation.figures import plot_pseudo_labelling
from keras_supcon.evaluation.metrics import EVAL_BATCH
from keras_supcon.evaluation.tables import markdown_table
from keras_supcon.runs.rundir import CONFIG_FILE, default_run_dir, open_run
from keras_supcon.training import build
from keras_supcon.training.distribute import precision_policy
from keras_supcon.training.settings import TrainConfig, load_data
from keras_supcon.training.stages import train_classifier

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


def pseudo_labels(classifier, ds, image_size, threshold):
    """Predict ``ds`` of ``(image, true label or -1)``: ``(keep mask, predicted labels,
    true labels)``; kept = softmax confidence >= ``threshold``."""
    probs, true = predict(classifier, supervised_batches(ds, image_size, EVAL_BATCH))
    return probs.max(axis=1) >= threshold, probs.argmax(axis=1), true


def _train_stage(config, data, run, stage, train_ds, n_train):
    """Train (or load, if done) the classifier of ``stage`` on ``train_ds``."""
    def train():
        splits = dataclasses.replace(
            data, train=train_ds.apply(tf.data.experimental.assert_cardinality(n_train)),
            sizes={**data.sizes, "train": n_train})
        keras.utils.set_random_seed(config.seed)  # every classifier starts alike
        classifier = build.new_classifier(config, data.num_classes)
        train_classifier(config, splits, run, classifier, stage, config.epochs, config.lr)
        return classifier

    return run.stage(stage, train, f"{stage}.keras")


def _test_metrics(config, data, classifier):
    probs, labels = predict(classifier, supervised_batches(data.test, config.image_size,
                                                           EVAL_BATCH))
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
    started = time.time()
    config, run, study, data, pools = _open_study(config, study, resume, overwrite)
    keras.mixed_precision.set_global_policy(precision_policy(config.mixed_precision))
    log.info("pseudo-labelling on %s: %d labelled images, ratios %s, threshold %g",
             data.name, pools.n_labelled, ", ".join(map(ratio_label, study["ratios"])),
             study["threshold"])
    results = run.read_json(RESULTS_FILE) if run.file(RESULTS_FILE).exists() else {}
    teacher = _train_stage(config, data, run, "teacher", pools.labelled, pools.n_labelled)
    if "teacher" not in results:
        results["teacher"] = {"ratio": 0.0, "round": 0, "unlabelled": 0, "kept": 0,
                              "pseudo_label_accuracy": None, "train_images": pools.n_labelled,
                              "test": _test_metrics(config, data, teacher)}
        run.write_json(RESULTS_FILE, results)
    rows = [results["teacher"]] if 0.0 in study["ratios"] else []
    for ratio in (r for r in study["ratios"] if r > 0):
        rows += _student_rounds(config, data, run, study, results, teacher, ratio, pools)
    report = write_pseudo_report(run, rows, study, config, data.name, pools.n_labelled)
    return run.finish({"rows": rows, "report": str(report)}, started)


def _open_study(config, study, resume, overwrite):
    """``(config, run, study, data, pools)`` of a new study, or of the one in ``config.out``
    with its settings and study as they were started (``resume``)."""
    if resume:
        config, run = open_run(config, resume=True)
        study = run.read_json(CONFIG_FILE)["pseudo_labelling"]
    elif config.out is None:
        config.out = str(default_run_dir(config.dataset, "pseudo"))
    _check_study(config, study)
    config.validate()
    data = load_data(config)
    pools = split_pools(data, config.dataset, labelled=study["labelled"],
                        max_ratio=max(study["ratios"]), source=study["unlabelled"],
                        data_dir=config.data_dir, seed=config.seed)
    if not resume:  # (data errors surface before a new run writes anything)
        config, run = open_run(config, overwrite=overwrite)
        run.begin(asdict(config), resume=False, pseudo_labelling=study)
    return config, run, study, data, pools


def _student_rounds(config, data, run, study, results, teacher, ratio, pools):
    """The rounds of students at labelled:unlabelled ratio ``1:ratio`` (each stage
    trained, or loaded when done); their rows of ``results``."""
    unlabelled_ds, n_unlabelled = unlabelled_subset(pools.pool, pools.pool_index,
                                                  int(round(ratio * pools.n_labelled)))
    current, rows = teacher, []
    for k in range(1, study["rounds"] + 1):
        stage = f"student-1to{ratio:g}-round{k}"
        if stage in results and run.stage_done(stage):
            current = keras.models.load_model(run.file(f"{stage}.keras"))
            rows.append(results[stage])
            continue
        keep, predicted, true = pseudo_labels(current, unlabelled_ds, config.image_size,
                                              study["threshold"])
        kept = int(keep.sum())
        accuracy = float((predicted[keep] == true[keep]).mean()) if pools.known and kept else None
        log.info("%s: %d of %d unlabelled images kept (pseudo-label accuracy %s)",
                 stage, kept, n_unlabelled, accuracy)
        train_ds = pools.labelled.concatenate(with_pseudo_labels(unlabelled_ds, keep,
                                                                  predicted))
        current = _train_stage(config, data, run, stage, train_ds, pools.n_labelled + kept)
        results[stage] = {"ratio": ratio, "round": k, "unlabelled": n_unlabelled, "kept": kept,
                          "pseudo_label_accuracy": accuracy,
                          "train_images": pools.n_labelled + kept,
                          "test": _test_metrics(config, data, current)}
        run.write_json(RESULTS_FILE, results)
        rows.append(results[stage])
    return rows


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
    final = list({r["ratio"]: r for r in rows}.values())  # the last round of each ratio
    title = (f"Pseudo-labelling on {dataset}: {n_labelled} labelled, {config.backbone}, "
             f"{config.epochs} epochs")
    run.save_figure(plot_pseudo_labelling(final, study["threshold"], title), "pseudo_label.png")
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
