"""The whole job of ``python -m keras_supcon.train``, as one library call.

Stages (each resumable from its last per-epoch checkpoint):

1. ``pretrain``: encoder + projection head trained with the contrastive loss
   (``supcon``, ``simclr`` or ``npairs``) on two augmented views per image;
2. ``linear``: encoder frozen, softmax classifier trained with cross-entropy;

or, for ``loss="ce"``, one ``ce`` stage training the classifier end to end.
Then test metrics, figures and a SavedModel export, all into the run directory.
"""

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from keras_supcon.compression.export import check_saved_model, export_saved_model
from keras_supcon.data import contrastive_batches, load_dataset, supervised_batches
from keras_supcon.data.pipeline import check_contrastive_batch_size
from keras_supcon.errors import ConfigError
from keras_supcon.evaluation import (
    classification_metrics,
    embedding_metrics,
    plot_confusion,
    plot_curves,
    plot_tsne,
    predict,
    tsne_embedding,
)
from keras_supcon.losses import NPairsLoss, SimCLRLoss, SupConLoss
from keras_supcon.models import (
    build_classifier,
    build_contrastive_model,
    build_encoder,
    build_projection_head,
    freeze,
    get_backbone,
)
from keras_supcon.models.backbones import normalize_weights, resolve_image_size
from keras_supcon.training.callbacks import read_history, stage_callbacks
from keras_supcon.training.optim import OPTIMIZERS, make_optimizer
from keras_supcon.training.rundir import CONFIG_FILE, RunDir

log = logging.getLogger(__name__)

LOSSES = ("supcon", "simclr", "npairs", "ce")
DEFAULT_TEMPERATURE = {"supcon": 0.1, "simclr": 0.1, "npairs": 0.05}
# Settings that only change the contrastive runs (ce ignores them).
CONTRASTIVE_ONLY = frozenset({"temperature", "variant", "views", "projection_dim", "head_hidden",
                              "linear_epochs", "linear_lr"})


@dataclass
class TrainConfig:
    """Every setting of a run (written to ``config.json``)."""

    dataset: str = "digits"
    data_dir: str = None
    backbone: str = "small_resnet"
    weights: str = "none"
    image_size: int = None  # default: the backbone's default size
    loss: str = "supcon"
    temperature: float = None  # default: 0.1 (supcon, simclr), 0.05 (npairs, as the tutorial)
    variant: str = "out"
    views: int = 2
    projection_dim: int = 128
    head_hidden: int = 512
    epochs: int = 5
    linear_epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    linear_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    early_stopping: int = None  # patience in epochs; None: run all epochs, keep the best
    val_fraction: float = 0.1
    seed: int = 0
    mixed_precision: bool = False
    cache: bool = False
    out: str = None
    verbose: str = "auto"  # Keras fit verbosity: "auto" (progress bar), 0, 1 or 2

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self):
        """Check every setting that can be checked without data; fill in defaults."""
        spec = get_backbone(self.backbone)
        self.image_size = resolve_image_size(spec, self.image_size)
        normalize_weights(self.weights)
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        if self.temperature is None and self.loss != "ce":
            self.temperature = DEFAULT_TEMPERATURE[self.loss]
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0; got {self.temperature}")
        if self.variant not in ("out", "in"):
            raise ConfigError(f"variant must be 'out' or 'in'; got {self.variant!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; "
                              f"choose one of: {', '.join(OPTIMIZERS)}")
        if self.loss != "ce":
            check_contrastive_batch_size(self.batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        if self.views < 1 or (self.loss == "simclr" and self.views < 2):
            raise ConfigError(f"views must be >= 1 (>= 2 for simclr); got {self.views}")
        for name in ("epochs", "linear_epochs"):
            if getattr(self, name) < (1 if name == "epochs" or self.loss != "ce" else 0):
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early-stopping patience must be >= 1; got {self.early_stopping}")
        if self.out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = Path(str(self.dataset)).stem or "data"
            self.out = str(Path("runs") / f"{stamp}-{name}-{self.backbone}-{self.loss}")
        return self


def library_versions():
    import sklearn
    import tensorflow as tf

    import keras_supcon

    return {"keras_supcon": keras_supcon.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "backend": keras.backend.backend()}


def contrastive_loss(config):
    if config.loss == "supcon":
        return SupConLoss(temperature=config.temperature, variant=config.variant)
    if config.loss == "simclr":
        return SimCLRLoss(temperature=config.temperature)
    return NPairsLoss(temperature=config.temperature)


def _steps(num_examples, batch_size, drop_remainder):
    return max(num_examples // batch_size if drop_remainder else -(-num_examples // batch_size), 1)


def _fit(model, loss, metrics, train_ds, val_ds, *, run, stage, epochs, steps, lr, monitor,
         mode, config, extra_callbacks=()):
    model.compile(
        optimizer=make_optimizer(config.optimizer, lr, total_steps=epochs * steps,
                                 weight_decay=config.weight_decay,
                                 warmup_fraction=config.warmup_fraction),
        loss=loss,
        metrics=metrics,
    )
    callbacks = stage_callbacks(run, stage, monitor=monitor, mode=mode, epochs=epochs,
                                patience=config.early_stopping) + list(extra_callbacks)
    log.info("stage %s: %d epochs of %d steps", stage, epochs, steps)
    # shuffle=False: the tf.data pipelines shuffle themselves.
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
              verbose=config.verbose, shuffle=False)


def _pretrain(config, data, run, encoder):
    n_train, n_val = data.sizes["train"], data.sizes["val"]
    kw = dict(views=config.views, cache=config.cache)
    train_ds = contrastive_batches(data.train, config.image_size, config.batch_size,
                                   shuffle=True, seed=config.seed, num_examples=n_train, **kw)
    val_batch = min(config.batch_size, n_val)
    val_ds = (contrastive_batches(data.val, config.image_size, val_batch, shuffle=False,
                                  num_examples=n_val, **kw) if val_batch >= 2 else None)
    head = build_projection_head(encoder.output_shape[-1], config.head_hidden,
                                 config.projection_dim)
    model = build_contrastive_model(encoder, head, views=config.views)
    _fit(model, contrastive_loss(config), None, train_ds, val_ds, run=run, stage="pretrain",
         epochs=config.epochs, steps=_steps(n_train, config.batch_size, True), lr=config.lr,
         monitor="val_loss" if val_ds is not None else "loss", mode="min", config=config)


def train_classifier(config, data, run, classifier, stage, epochs, lr, extra_callbacks=()):
    """Cross-entropy training of ``classifier`` as stage ``stage`` of ``run`` (augmented
    train split, best validation-accuracy epoch kept; settings from ``config``)."""
    n_train = data.sizes["train"]
    train_ds = supervised_batches(data.train, config.image_size, config.batch_size, augment=True,
                                  shuffle=True, seed=config.seed, cache=config.cache,
                                  num_examples=n_train)
    val_ds = supervised_batches(data.val, config.image_size, config.batch_size,
                                cache=config.cache)
    _fit(classifier, "sparse_categorical_crossentropy", ["accuracy"], train_ds, val_ds, run=run,
         stage=stage, epochs=epochs, steps=_steps(n_train, config.batch_size, False), lr=lr,
         monitor="val_accuracy", mode="max", config=config, extra_callbacks=extra_callbacks)


def train(config=None, *, resume=False, overwrite=False, **settings):
    """Run the whole job and return the test metrics (also in ``RUN_DIR/metrics.json``).

    ``train(TrainConfig(...))`` or ``train(backbone="resnet50", epochs=2, ...)``.
    ``resume=True`` continues the run in ``config.out`` with its saved settings.
    """
    config = dataclasses.replace(config or TrainConfig(), **settings)
    if resume:
        if config.out is None:
            raise ConfigError("--resume needs --out RUN_DIR")
        run = RunDir.prepare(config.out, resume=True)
        config = TrainConfig.from_dict(run.read_json(CONFIG_FILE)["settings"])
        config.out = str(run.path)  # the folder may have moved since
        config.validate()
        log.info("resuming %s (completed stages: %s)", run.path,
                 ", ".join(run.state()["completed"]) or "none")
    else:
        config.validate()
        run = RunDir.prepare(config.out, overwrite=overwrite)

    started = time.time()
    # Data errors surface before a new run writes anything.
    data = load_dataset(config.dataset, data_dir=config.data_dir,
                        val_fraction=config.val_fraction, seed=config.seed)
    log.info("data %s", data.describe())
    if config.loss != "ce":
        check_contrastive_batch_size(config.batch_size, data.sizes["train"])
    if not resume:
        run.write_json(CONFIG_FILE, {"settings": asdict(config), "versions": library_versions()})
        run.init_state()

    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision
                                            else "float32")

    classifier = None
    if run.stage_done("linear") or run.stage_done("ce"):
        classifier = keras.models.load_model(run.file("classifier.keras"))
        encoder = classifier.get_layer(f"encoder_{config.backbone}")
    elif config.loss == "ce":
        encoder = build_encoder(config.backbone, config.image_size, config.weights)
    elif run.stage_done("pretrain"):
        encoder = keras.models.load_model(run.file("encoder.keras"))
    else:
        encoder = build_encoder(config.backbone, config.image_size, config.weights)
        _pretrain(config, data, run, encoder)
        run.save_model(encoder, "encoder.keras")
        run.mark_stage_done("pretrain")

    if classifier is None:
        stage = "ce" if config.loss == "ce" else "linear"
        if stage == "linear":
            freeze(encoder)
        classifier = build_classifier(encoder, data.num_classes)
        train_classifier(config, data, run, classifier, stage,
                          config.epochs if stage == "ce" else config.linear_epochs,
                          config.lr if stage == "ce" else config.linear_lr)
        if stage == "ce":  # a frozen encoder was saved when pre-training ended
            run.save_model(encoder, "encoder.keras")
        run.save_model(classifier, "classifier.keras")
        run.mark_stage_done(stage)

    metrics = evaluate_run(config, data, run, classifier, encoder)
    metrics["wall_time_s"] = round(time.time() - started, 1)
    metrics["run_dir"] = str(run.path)
    run.write_json("metrics.json", metrics)
    run.mark_finished()
    return metrics


def evaluate_run(config, data, run, classifier, encoder):
    """Test metrics, figures and SavedModel export of a trained classifier."""
    test_ds = supervised_batches(data.test, config.image_size, 256)
    probs, labels = predict(classifier, test_ds)
    metrics = classification_metrics(labels, probs, data.class_names)
    metrics.update(dataset=data.name, backbone=config.backbone, loss=config.loss,
                   split_sizes=data.sizes)
    title = (f"{data.name} | {config.backbone} | {config.loss} | "
             f"test accuracy {metrics['accuracy']:.3f}")

    run.save_figure(plot_curves(read_history(run), title), "curves.png")
    embeddings, emb_labels = predict(encoder, test_ds)
    train_emb, train_labels = predict(encoder, supervised_batches(data.train, config.image_size,
                                                                  256))
    metrics["embedding"] = embedding_metrics(train_emb, train_labels, embeddings, emb_labels)
    points, point_labels = tsne_embedding(embeddings, emb_labels, max_per_class=500,
                                          seed=config.seed)
    run.save_figure(plot_tsne(points, point_labels, data.class_names,
                              f"t-SNE of test encoder embeddings\n{title}"), "tsne.png")
    run.save_figure(plot_confusion(metrics["confusion_matrix"], data.class_names,
                                   f"Confusion matrix (test)\n{title}"), "confusion.png")

    with run.atomic_path("saved_model") as tmp:
        export_saved_model(classifier, tmp)
    sample = next(iter(test_ds))[0][:32]
    diff = check_saved_model(run.file("saved_model"), classifier, sample)
    metrics["saved_model_max_abs_diff"] = diff
    if not diff < 1e-4:
        raise RuntimeError(f"exported SavedModel disagrees with the classifier (max |diff| {diff})")
    return metrics
