"""The whole job of ``python -m keras_supcon.prune RUN_DIR``, as one library call.

Reads a finished training run (``classifier.keras``, ``config.json``,
``saved_model/``), never writes into it except its own sub-directory
(default ``RUN_DIR/pruning/``), and for each requested sparsity runs one job in
``<out>/<method>-s<sparsity>/``:

- ``magnitude``: tfmot magnitude pruning of the run's classifier, fine-tuned;
- ``lottery``: lottery-ticket pruning (train, prune, rewind, retrain), reported
  beside one-shot magnitude pruning of the same trained network;
- ``sensitivity``: per-layer sparsities from measured layer sensitivity, pruned
  with tfmot, reported beside uniform magnitude pruning at the same target.

Each job writes ``pruned_classifier.keras``, ``pruned_saved_model/`` (same
signature as the run's export), TFLite models (dynamic-range and full int8),
``compression.json`` and ``compression.md``. A finished job is skipped when the
command is repeated, so an interrupted sweep continues where it stopped.
Several sparsities also give ``sweep.md``, ``sweep.csv`` and ``sweep.png``.
"""

import dataclasses
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_supcon.compression.lottery import lottery_ticket
from keras_supcon.compression.prune import (
    parse_m_by_n,
    prunable_layers,
    prune_classifier,
    sparsity_table,
)
from keras_supcon.compression.quantize import convert_tflite, tflite_latency_ms, tflite_predict
from keras_supcon.compression.report import (
    disk_bytes,
    format_report,
    latency_ms,
    sweep_rows,
    write_sweep,
    zipped_bytes,
)
from keras_supcon.compression.sensitivity import (
    allocate_sparsity,
    layer_sensitivity,
    predicted_drop,
)
from keras_supcon.compression.settings import METHOD_SETTINGS, PruneConfig, job_name
from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.errors import ConfigError, RunDirError
from keras_supcon.evaluation import classification_metrics, predict
from keras_supcon.evaluation.metrics import EVAL_BATCH
from keras_supcon.models.batchnorm import precise_batchnorm
from keras_supcon.runs.export import check_saved_model, export_saved_model
from keras_supcon.runs.rundir import CONFIG_FILE, RunDir, settings_changes
from keras_supcon.training.settings import TrainConfig, augmentation_policies

log = logging.getLogger(__name__)

class _Context:
    """What every job of one invocation shares: the run, its data and the baseline."""

    def __init__(self, config):
        self.config = config
        self.run = Path(config.run_dir)
        if not (self.run / "classifier.keras").is_file():
            raise RunDirError(f"{self.run} holds no trained classifier (classifier.keras is "
                              f"missing); prune a finished run of python -m keras_supcon.train")
        if not (self.run / "saved_model").is_dir():
            raise RunDirError(f"{self.run} has no saved_model/ export (the run did not finish)")
        self.train_config = TrainConfig.from_dict(
            RunDir(self.run).read_json(CONFIG_FILE)["settings"])
        if config.batch_size:
            self.train_config.batch_size = config.batch_size
        self.classifier = keras.models.load_model(self.run / "classifier.keras")
        self.data = load_dataset(self.train_config.dataset, data_dir=self.train_config.data_dir,
                                 val_fraction=self.train_config.val_fraction,
                                 seed=self.train_config.seed)
        size, batch = self.train_config.image_size, self.train_config.batch_size
        self.test_ds = supervised_batches(self.data.test, size, EVAL_BATCH)
        self.val_ds = supervised_batches(self.data.val, size, EVAL_BATCH)
        self.calibration_ds = supervised_batches(self.data.train, size, batch)
        # fine-tuning augments as the run's classifier stages did
        self.train_ds = supervised_batches(self.data.train, size, batch,
                                           augment=self.train_config.augment,
                                           policy=augmentation_policies(self.train_config,
                                                                        self.data)[1],
                                           shuffle=True, seed=self.train_config.seed,
                                           num_examples=self.data.sizes["train"])
        self.names = prunable_layers(self.classifier, layers=config.layers,
                                     include_first_conv=config.include_first_conv)
        self.sample = next(iter(self.test_ds))[0].numpy()
        self.baseline = self.measure(self.classifier, self.run / "saved_model")

    def evaluate(self, model):
        probs, labels = predict(model, self.test_ds)
        return classification_metrics(labels, probs, self.data.class_names)

    def measure(self, model, saved_model):
        metrics = self.evaluate(model)
        serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        one, batch = tf.constant(self.sample[:1]), tf.constant(self.sample[:64])
        return {
            "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
            "precision_macro": metrics["precision_macro"], "recall_macro": metrics["recall_macro"],
            "saved_model": str(saved_model),
            "saved_model_bytes": disk_bytes(saved_model),
            "saved_model_zipped_bytes": zipped_bytes(saved_model),
            "latency_ms_batch1": latency_ms(lambda: serve(images=one)),
            "ms_per_image_batch64": latency_ms(lambda: serve(images=batch)) / len(batch),
            "sparsity": sparsity_table(model, self.names),
        }

    # ------------------------------------------------------------------ jobs
    def job(self, method, sparsity):
        """Run (or reuse, when finished) one job; return its report."""
        cfg = self.config
        path = Path(cfg.out) / job_name(method, sparsity, cfg.m_by_n if method == "magnitude"
                                        else None)
        settings = {k: v for k, v in asdict(cfg).items()
                    if k not in ("run_dir", "out", "overwrite", "verbose", "sparsity")}
        settings.update(method=method, sparsity=sparsity)
        job = RunDir(path)
        if job.is_finished() and (path / "compression.json").is_file() and not cfg.overwrite:
            keys = METHOD_SETTINGS[method] + ("batch_size",)
            changed = settings_changes(job.read_json(CONFIG_FILE)["settings"],
                                       {k: settings[k] for k in keys})
            if changed:
                raise ConfigError(f"{path} holds a finished job with other settings "
                                  f"({'; '.join(changed)}); use --overwrite or another --out")
            log.info("%s: finished earlier, reusing its report", path)
            return job.read_json("compression.json")
        job = RunDir.prepare(path, overwrite=True)
        job.start(settings, run_dir=str(self.run))
        started = time.time()
        extra = {}
        if method == "lottery":
            model, extra = self._lottery(job, sparsity)
        else:
            layer_sparsity = None
            if method == "sensitivity":
                layer_sparsity, extra = self._sensitivity(sparsity)
            result = prune_classifier(
                self.classifier, self.train_ds, sparsity=sparsity, schedule=cfg.schedule,
                epochs=cfg.epochs, learning_rate=cfg.lr, m_by_n=parse_m_by_n(cfg.m_by_n),
                layer_sparsity=layer_sparsity, layers=self.names, val_ds=self.val_ds,
                calibration_ds=self.calibration_ds, verbose=cfg.verbose)
            model = result.model
            extra.update(layer_sparsity=result.layer_sparsity, left_dense=result.left_dense,
                         history=result.history)
        report = self.finish(job, model, method, sparsity, extra)
        report["wall_time_s"] = round(time.time() - started, 1)
        if method in ("lottery", "sensitivity"):
            uniform = self.job("magnitude", sparsity)
            report["compared_with"] = {"magnitude (uniform, tfmot)": _summary(uniform)}
            if method == "lottery":
                report["compared_with"].update(extra.pop("comparison"))
        job.write_json("compression.json", report)
        job.write_text("compression.md", format_report(report))
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        job.mark_finished()
        return report

    def _sensitivity(self, sparsity):
        base, drops = layer_sensitivity(self.classifier, self.names, self.val_ds,
                                        self.config.rates)
        sizes = {n: r["params"] for n, r in self.baseline["sparsity"]["layers"].items()}
        allocation = allocate_sparsity(drops, sizes, sparsity, self.config.rates)
        uniform = {n: sparsity for n in self.names}
        log.info("sensitivity: predicted accuracy drop %.4f (uniform: %.4f)",
                 predicted_drop(drops, allocation, self.config.rates),
                 predicted_drop(drops, uniform, self.config.rates))
        return allocation, {"sensitivity": {
            "val_accuracy": base, "rates": list(self.config.rates), "drops": drops,
            "predicted_drop": predicted_drop(drops, allocation, self.config.rates),
            "predicted_drop_uniform": predicted_drop(drops, uniform, self.config.rates)}}

    def _lottery(self, job, sparsity):
        cfg = self.config
        tc = dataclasses.replace(self.train_config, out=str(job.path), verbose=cfg.verbose)
        models = lottery_ticket(tc, self.data, job, self.names, sparsity=sparsity,
                                scope=cfg.scope, rounds=cfg.rounds,
                                rewind_epoch=cfg.rewind_epoch, train_epochs=cfg.train_epochs,
                                retrain_epochs=cfg.epochs)
        for key in ("one_shot", "ticket"):  # as the tfmot path does
            precise_batchnorm(models[key], self.calibration_ds)
        comparison = {}
        for key, label in (("dense", "dense network trained for the ticket"),
                           ("one_shot", "one-shot magnitude pruning of it, fine-tuned")):
            m = self.evaluate(models[key])
            comparison[label] = {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                                 "sparsity": sparsity_table(models[key], self.names)["total"][
                                     "sparsity"]}
        return models["ticket"], {"lottery": {
            "scope": cfg.scope, "rounds": models["rounds"], "rewind_epoch": cfg.rewind_epoch},
            "layer_sparsity": {n: r["sparsity"] for n, r in
                               sparsity_table(models["ticket"], self.names)["layers"].items()},
            "comparison": comparison}

    def finish(self, job, model, method, sparsity, extra):
        """Save, export, check, measure and (optionally) quantise a pruned classifier."""
        job.save_model(model, "pruned_classifier.keras")
        with job.atomic_path("pruned_saved_model") as tmp:
            export_saved_model(model, tmp)
        saved = job.file("pruned_saved_model")
        diff = check_saved_model(saved, model, self.sample[:32])
        if not diff < 1e-4:
            raise RuntimeError(f"pruned SavedModel disagrees with the model (max |diff| {diff})")
        reloaded = keras.models.load_model(job.file("pruned_classifier.keras"))
        pruned = self.measure(reloaded, saved)
        pruned["saved_model_max_abs_diff"] = diff
        report = {
            "method": method, "target_sparsity": sparsity, "run_dir": str(self.run),
            "backbone": self.train_config.backbone, "dataset": self.data.name,
            "settings": {k: v for k, v in asdict(self.config).items()
                         if k in METHOD_SETTINGS[method] and v is not None},
            "baseline": self.baseline, "pruned": pruned,
            "compression_ratio": self.baseline["saved_model_bytes"] / pruned["saved_model_bytes"],
            "compression_ratio_zipped": (self.baseline["saved_model_zipped_bytes"]
                                         / pruned["saved_model_zipped_bytes"]),
            "accuracy_change": pruned["accuracy"] - self.baseline["accuracy"],
            "f1_change": pruned["f1_macro"] - self.baseline["f1_macro"],
        }
        report.update(extra)
        if self.config.tflite:
            report["tflite"] = self.quantise(job)
        return report

    def quantise(self, job):
        images, labels = [], []
        for x, y in self.test_ds:
            images.append(x.numpy())
            labels.append(y.numpy())
        images, labels = np.concatenate(images), np.concatenate(labels)
        representative = next(iter(supervised_batches(
            self.data.train, self.train_config.image_size, 128, shuffle=True, seed=0)))[0]
        out = {}
        for mode in ("dynamic", "int8"):
            name = f"pruned_{mode}.tflite"
            with job.atomic_path(name) as tmp:
                tmp.write_bytes(convert_tflite(job.file("pruned_saved_model"), mode,
                                               representative.numpy()))
            probs = tflite_predict(job.file(name), images)
            out[mode] = {"file": name, "bytes": disk_bytes(job.file(name)),
                         "zipped_bytes": zipped_bytes(job.file(name)),
                         "accuracy": float((probs.argmax(axis=1) == labels).mean()),
                         "latency_ms_batch1": tflite_latency_ms(job.file(name), images[0])}
        return out


def _summary(report):
    p = report["pruned"]
    return {"accuracy": p["accuracy"], "f1_macro": p["f1_macro"],
            "sparsity": p["sparsity"]["total"]["sparsity"]}


def prune_run(config=None, **settings):
    """Run every requested job; return ``{"reports": [...], "baseline": {...}}``."""
    config = dataclasses.replace(config or PruneConfig(), **settings).validate()
    context = _Context(config)
    reports = [context.job(config.method, s) for s in config.sparsity]
    result = {"baseline": context.baseline, "reports": reports, "out": config.out}
    if len(reports) > 1:
        result["sweep"] = write_sweep(config.out, config.method,
                                      sweep_rows(context.baseline, reports))
    return result
