"""Images/second of one full SupCon training step: ours vs the Keras tutorial's way.

A step is two augmented views of a batch of ``B`` images, the backbone on the
``2B`` view-images, the projection head, the loss and the optimizer update, at
32x32 on the CIFAR-10 subset (``../shared/data/cifar10_subset.npz``), weights=None.

- ``ours``: the library's way: :func:`~keras_supcon.data.contrastive_batches`
  (two views augmented in ``tf.data``, vectorised over the batch) feeding
  ``build_contrastive_model(build_encoder(...), build_projection_head(...))``,
  compiled with :class:`~keras_supcon.losses.SupConLoss` and ``make_optimizer``
  (Adam, warm-up + cosine), trained with ``model.fit``.
- ``tutorial``: the way of the Keras example ``supervised-contrastive-learning.py``
  (and the SHARCNet slides that follow it): plain ``(image, label)`` batches,
  augmentation as Keras preprocessing layers inside the model, applied twice to
  the batch and concatenated (the same ``2B`` images through the encoder), a
  ``Normalization`` layer, the same backbone, the same head widths as ours
  (``Dense(512, relu) -> Dense(128)``; the tutorial's own head is one
  ``Dense(128, relu)``) so both do the same work, and the tutorial's loss class
  (``tf.math.l2_normalize``, ``matmul / temperature``, TensorFlow Addons'
  ``npairs_loss``, whose body is written out below) on the labels tiled for the
  two views; compiled with default settings and ``Adam(1e-3)``.

Variants: ``graph`` (float32, ``jit_compile=False``: what ``jit_compile="auto"``
resolves to on a CPU-only machine), ``xla`` (``jit_compile=True`` asked of both
models; Keras refuses it for the tutorial's, whose ``RandomZoom`` /
``RandomTranslation`` layers are marked ``supports_jit=False``, and trains it
without XLA: the row compares ours with XLA to the tutorial without) and
``mixed_bf16`` (``mixed_bfloat16`` policy: on a CPU, bfloat16 is the
half-precision type with fast kernels; the library's ``--mixed-precision`` sets
``mixed_float16``, meant for GPUs, and on this CPU runs ~5x slower than float32:
``--variants mixed_fp16``). XLA for DenseNet-201 is skipped by default (``--skip``).

Timing: a callback records the wall clock at the end of every batch. Each model
is first warmed up (tracing, compiling, first steps, not timed); then ``ours``
and ``tutorial`` alternate for ``--rounds`` rounds of ``steps / rounds`` timed
steps in one process, each round a ``fit`` call whose first batch is not timed.
img/s counts view-images (``2 * B`` per step); source img/s is half of it.
"""

import argparse
import gc
import os
import sys
import time
import warnings

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, markdown_table, save_results

# TensorFlow is imported lazily, after this (its C++ warnings flood the progress lines).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAME = "train_step"
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
DEFAULT_BACKBONES = ("small_resnet", "resnet50", "densenet201")
# Timed steps per model and variant (a step is 2 x 64 view-images), sized for a
# ~10-15 minute run on a 2-core CPU (see docs/performance.md).
DEFAULT_STEPS = {"small_resnet": 40, "resnet50": 12, "densenet201": 8}
VARIANTS = {
    "graph": {"policy": "float32", "jit_compile": False},
    "xla": {"policy": "float32", "jit_compile": True},
    "mixed_bf16": {"policy": "mixed_bfloat16", "jit_compile": False},
    "mixed_fp16": {"policy": "mixed_float16", "jit_compile": False},
}
DEFAULT_VARIANTS = ("graph", "xla", "mixed_bf16")
# XLA for DenseNet-201: measured on the 2-core CPU (under load), the first step of
# ours took 266 s (graph: 95 s) and then ran at 62 view-img/s (graph: 174).
DEFAULT_SKIP = ("xla:densenet201",)
SKIP_WHY = ("skipped by default (--skip): XLA compilation of the DenseNet-201 train step "
            "took 266 s on this CPU (graph tracing 95 s), and the XLA step ran at 62 "
            "view-img/s against 174 without XLA; run it with --skip ''")
IMAGE_SIZE = 32
VIEWS = 2
LR = 1e-3
TUTORIAL_TEMPERATURE = 0.05  # the tutorial's
SUPCON_TEMPERATURE = 0.1  # the library's default for supcon

OURS_AUGMENTATION = ("tf.data, per batch (keras_supcon.data.augment.make_views, "
                     "CONTRASTIVE_POLICY): random resized crop (area 0.2-1, aspect 3/4-4/3, "
                     "crop_and_resize), horizontal flip p=0.5, colour jitter "
                     "(brightness x[0.6,1.4], contrast [0.6,1.4], saturation [0.6,1.4], "
                     "hue +-0.1) with p=0.8, grayscale p=0.2")
TUTORIAL_AUGMENTATION = [
    "RandomZoom(height_factor=(-0.55, 0.0), width_factor=(-0.55, 0.0))  # crop 45-100% per side",
    "RandomTranslation(0.2, 0.2)  # with the zoom: a random resized crop",
    "RandomFlip('horizontal')",
    "RandomColorJitter(value_range=(0, 255), brightness_factor=0.4, contrast_factor=0.4, "
    "saturation_factor=(0.375, 0.583), hue_factor=(0.0, 0.2))  # always applied",
    "RandomGrayscale(factor=0.2)",
    "then Normalization(mean, variance of the training images)",
]


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------- the tutorial's loss
def tfa_npairs_loss(y_true, y_pred):
    """The body of ``tfa.losses.npairs_loss`` (TensorFlow Addons, retired)."""
    import tensorflow as tf

    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.cast(y_true, y_pred.dtype)
    # Expand to [batch_size, 1]
    y_true = tf.expand_dims(y_true, -1)
    y_true = tf.cast(tf.equal(y_true, tf.transpose(y_true)), y_pred.dtype)
    y_true /= tf.math.reduce_sum(y_true, 1, keepdims=True)
    loss = tf.nn.softmax_cross_entropy_with_logits(logits=y_pred, labels=y_true)
    return tf.math.reduce_mean(loss)


def make_tutorial_loss(temperature=TUTORIAL_TEMPERATURE, views=VIEWS):
    """The tutorial's ``SupervisedContrastiveLoss``, for ``views`` views concatenated
    view-major (``[view 0 of the batch; view 1 of the batch; ...]``)."""
    import keras
    import tensorflow as tf

    class SupervisedContrastiveLoss(keras.losses.Loss):
        def __init__(self, temperature=1, name=None):
            super().__init__(name=name)
            self.temperature = temperature

        def __call__(self, labels, feature_vectors, sample_weight=None):
            labels = tf.tile(tf.reshape(labels, [-1]), [views])
            # (cast: the embeddings may be bfloat16 under mixed precision)
            feature_vectors = tf.cast(feature_vectors, tf.float32)
            # Normalize feature vectors
            feature_vectors_normalized = tf.math.l2_normalize(feature_vectors, axis=1)
            # Compute logits
            logits = tf.divide(
                tf.matmul(feature_vectors_normalized, tf.transpose(feature_vectors_normalized)),
                self.temperature,
            )
            return tfa_npairs_loss(tf.squeeze(labels), logits)

    return SupervisedContrastiveLoss(temperature)


# ---------------------------------------------------------------- models and data
def _train_arrays(data):
    x, y = [], []
    for images, labels in data.train.batch(1024):
        x.append(images.numpy())
        y.append(labels.numpy())
    return np.concatenate(x), np.concatenate(y)


def build_tutorial_model(backbone, mean, variance, image_size=IMAGE_SIZE, views=VIEWS):
    """Images ``[B, S, S, 3]`` -> embeddings ``[views * B, 128]`` (views concatenated)."""
    import keras
    from keras import layers

    from keras_supcon.models.backbones import build_backbone

    data_augmentation = keras.Sequential([
        layers.RandomZoom(height_factor=(-0.55, 0.0), width_factor=(-0.55, 0.0)),
        layers.RandomTranslation(0.2, 0.2),
        layers.RandomFlip("horizontal"),
        layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.4,
                                 contrast_factor=0.4, saturation_factor=(0.375, 0.583),
                                 hue_factor=(0.0, 0.2)),
        layers.RandomGrayscale(factor=0.2),
    ], name="data_augmentation")
    normalization = layers.Normalization(mean=mean, variance=variance, name="normalization")
    inputs = keras.Input((image_size, image_size, 3))
    augmented = [data_augmentation(inputs) for _ in range(views)]
    x = layers.Concatenate(axis=0, name="views")(augmented)
    x = normalization(x)
    features = build_backbone(backbone, (image_size, image_size, 3), None)(x)
    x = layers.Dense(512, activation="relu")(features)
    outputs = layers.Dense(128)(x)
    return keras.Model(inputs, outputs, name="tutorial_encoder_with_projection_head")


def build_ours(backbone, data, batch_size, total_steps):
    from keras_supcon.data import contrastive_batches
    from keras_supcon.losses import SupConLoss
    from keras_supcon.models import build_contrastive_model, build_encoder, build_projection_head
    from keras_supcon.training.optim import make_optimizer

    encoder = build_encoder(backbone, IMAGE_SIZE, None)
    head = build_projection_head(encoder.output_shape[-1], 512, 128)
    model = build_contrastive_model(encoder, head, views=VIEWS)
    ds = contrastive_batches(data.train, IMAGE_SIZE, batch_size, views=VIEWS, shuffle=True,
                             seed=0, num_examples=data.sizes["train"]).repeat()
    optimizer = make_optimizer("adam", LR, total_steps=total_steps)
    return model, ds, dict(optimizer=optimizer, loss=SupConLoss(temperature=SUPCON_TEMPERATURE))


def build_tutorial(backbone, data, batch_size, mean, variance):
    import keras
    import tensorflow as tf

    def to_float(images, labels):
        return tf.cast(images, tf.float32), labels

    model = build_tutorial_model(backbone, mean, variance)
    ds = (data.train.shuffle(data.sizes["train"], seed=0)
          .batch(batch_size, drop_remainder=True)
          .map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
          .repeat().prefetch(tf.data.AUTOTUNE))
    return model, ds, dict(optimizer=keras.optimizers.Adam(LR), loss=make_tutorial_loss())


# ---------------------------------------------------------------- timing
def _batch_timer():
    import keras

    class BatchTimer(keras.callbacks.Callback):
        """Wall clock at the end of each batch (the loss is read, so the step is done)."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])
            self.ends.append(time.perf_counter())

    return BatchTimer()


def _fit(model, ds, steps):
    timer = _batch_timer()
    model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
    return timer.ends


def _view_rate(stats, batch_size):
    return VIEWS * batch_size * stats["steps"] / stats["seconds"] if stats["seconds"] else 0.0


def measure_pair(backbone, variant, data, batch_size, steps, rounds, warmup, mean, variance):
    """Warm both models up, then alternate ``rounds`` timed fits of each."""
    import keras

    settings = VARIANTS[variant]
    keras.backend.clear_session()
    gc.collect()
    keras.mixed_precision.set_global_policy(settings["policy"])
    keras.utils.set_random_seed(0)
    try:
        per_round = max(1, -(-steps // rounds))
        total = warmup + rounds * (per_round + 1)
        built = {}
        for impl in ("ours", "tutorial"):
            t0 = time.perf_counter()
            if impl == "ours":
                model, ds, kw = build_ours(backbone, data, batch_size, total)
            else:
                model, ds, kw = build_tutorial(backbone, data, batch_size, mean, variance)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.compile(jit_compile=settings["jit_compile"], **kw)
            # Keras falls back to jit_compile=False (with a warning) when a layer of the
            # model cannot be XLA-compiled (the tutorial's augmentation layers).
            xla = bool(getattr(model, "jit_compile", False))
            notes = [str(w.message) for w in caught if "jit_compile" in str(w.message)]
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ends = _fit(model, ds, warmup)
            warm_s = time.perf_counter() - t0
            first_step_s = ends[0] - t0
            log(f"  {backbone} {variant} {impl}: built in {build_s:.1f} s, warm-up "
                f"{warmup} steps {warm_s:.1f} s (first step {first_step_s:.1f} s)"
                + ("" if xla == settings["jit_compile"] else "; XLA refused: " + "; ".join(notes)))
            built[impl] = (model, ds, {"jit_compile": xla, "jit_compile_notes": notes,
                                       "build_s": round(build_s, 2),
                                       "warmup_s": round(warm_s, 2),
                                       "first_step_s": round(first_step_s, 2),
                                       "params": int(model.count_params()),
                                       "rounds": []})
        for r in range(rounds):
            for impl in ("ours", "tutorial"):
                model, ds, stats = built[impl]
                ends = _fit(model, ds, per_round + 1)  # the first batch of a fit is not timed
                seconds = ends[-1] - ends[0]
                stats["rounds"].append({"steps": per_round, "seconds": seconds})
                rate = VIEWS * batch_size * per_round / seconds
                log(f"  {backbone} {variant} {impl} round {r + 1}/{rounds}: {per_round} steps "
                    f"{seconds:.2f} s, {rate:.0f} view-img/s")
        out = {"backbone": backbone, "variant": variant, **settings}
        for impl in ("ours", "tutorial"):
            stats = built[impl][2]
            stats["steps"] = sum(r["steps"] for r in stats["rounds"])
            stats["seconds"] = round(sum(r["seconds"] for r in stats["rounds"]), 4)
            rate = _view_rate(stats, batch_size)
            stats["view_images_per_s"] = round(rate, 2)
            stats["source_images_per_s"] = round(rate / VIEWS, 2)
            stats["round_view_images_per_s"] = [
                round(VIEWS * batch_size * r["steps"] / r["seconds"], 2) for r in stats["rounds"]]
            out[impl] = stats
        out["ratio"] = round(out["ours"]["view_images_per_s"]
                             / out["tutorial"]["view_images_per_s"], 3)
        # ratio of the per-round rates, round by round (a spread from one run)
        ratios = [a / b for a, b in zip(out["ours"]["round_view_images_per_s"],
                                        out["tutorial"]["round_view_images_per_s"])]
        out["round_ratios"] = [round(x, 3) for x in ratios]
        return out
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
        gc.collect()


# ---------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: small_resnet, graph variant, 2 steps")
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--skip", default=",".join(DEFAULT_SKIP),
                   help="comma list of variant:backbone pairs not to run ('' runs all); "
                        "default skips XLA for DenseNet-201 (minutes of XLA compilation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per model and variant (default per backbone: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--rounds", type=int, default=4,
                   help="ours and tutorial alternate this many times")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    if args.quick:
        args.backbones, args.variants, args.skip = "small_resnet", "graph", ""
        args.steps, args.rounds, args.warmup = args.steps or 2, 1, 1
    return args


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import keras

    from keras_supcon.data import load_dataset

    backbones, variants, skip = _csv(args.backbones), _csv(args.variants), set(_csv(args.skip))
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    started = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    x_train, _ = _train_arrays(data)
    pixels = x_train.reshape(-1, 3).astype(np.float64)
    mean, variance = pixels.mean(axis=0), pixels.var(axis=0)
    log(f"train_step: {data.describe()}; batch {args.batch_size} x {VIEWS} views, "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}; backbones {backbones}; variants {variants}")
    runs, skipped = [], []
    for backbone in backbones:
        steps = args.steps or DEFAULT_STEPS.get(backbone, 10)
        for variant in variants:
            if f"{variant}:{backbone}" in skip:
                why = (SKIP_WHY if (variant, backbone) == ("xla", "densenet201")
                       else "skipped (--skip)")
                skipped.append({"backbone": backbone, "variant": variant, "why": why})
                log(f"  {backbone} {variant}: skipped")
                continue
            t0 = time.perf_counter()
            out = measure_pair(backbone, variant, data, args.batch_size, steps, args.rounds,
                               args.warmup, mean, variance)
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            runs.append(out)
            log(f"{backbone} {variant}: ours {out['ours']['view_images_per_s']:.0f}, "
                f"tutorial {out['tutorial']['view_images_per_s']:.0f} view-img/s, "
                f"ratio {out['ratio']:.2f} ({out['wall_s']:.0f} s)")
    best = max(((r[i]["view_images_per_s"], r["backbone"], r["variant"], i)
                for r in runs for i in ("ours", "tutorial")), default=None)
    results = {
        "settings": {"dataset": str(args.dataset), "image_size": IMAGE_SIZE,
                     "batch_size": args.batch_size, "views": VIEWS, "weights": None,
                     "steps": {b: args.steps or DEFAULT_STEPS.get(b, 10) for b in backbones},
                     "rounds": args.rounds, "warmup_steps": args.warmup,
                     "optimizer": f"Adam lr {LR} (ours: make_optimizer warm-up + cosine; "
                                  "tutorial: constant)",
                     "head": "Dense(512, relu) -> Dense(128) (ours: then UnitNormalization)",
                     "loss": {"ours": f"SupConLoss(temperature={SUPCON_TEMPERATURE})",
                              "tutorial": f"tutorial npairs loss (temperature "
                                          f"{TUTORIAL_TEMPERATURE})"},
                     "quick": args.quick},
        "augmentation": {"ours": OURS_AUGMENTATION, "tutorial": TUTORIAL_AUGMENTATION},
        "runs": runs,
        "skipped": skipped,
        "max_step_view_images_per_s": round(best[0], 2) if best else None,
        "max_step": ({"backbone": best[1], "variant": best[2], "impl": best[3]}
                     if best else None),
        "wall_s": round(time.perf_counter() - started, 1),
        "keras_policy_after": keras.mixed_precision.global_policy().name,
    }
    command = "python -m benchmarks.train_step" + (" " + " ".join(argv) if argv else "")
    data_out = save_results(NAME, results, command=command, results_dir=args.results_dir)
    log(markdown(data_out))
    return data_out


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def _xla_cell(run):
    """``yes`` / ``no``, or ``ours yes, tutorial no`` where Keras refused XLA for one model."""
    asked = run["jit_compile"]
    got = {i: run[i].get("jit_compile", asked) for i in ("ours", "tutorial")}
    if got["ours"] == got["tutorial"]:
        return "yes" if got["ours"] else "no"
    return ", ".join(f"{i} {'yes' if got[i] else 'no'}" for i in got) + " (fallback)"


def markdown(data):
    """Tables (one per backbone) of view-images/s of ours and the tutorial, and their ratio."""
    res = data["results"]
    s = res["settings"]
    lines = [
        f"Full SupCon training step (2 views, backbone, head, loss, optimizer), "
        f"{s['image_size']}x{s['image_size']}, batch {s['batch_size']} images "
        f"x {s['views']} views, weights=None, timed steps per model: "
        + ", ".join(f"{k} {v}" for k, v in s["steps"].items())
        + f" in {s['rounds']} alternating rounds after {s['warmup_steps']} warm-up steps; "
        f"img/s = view-images per second (source images: half). Command: `{data['command']}`; "
        f"{data['machine'].get('cpu', '')}, {data['machine'].get('cores')} cores, "
        f"Keras {data['machine'].get('keras')}, TF {data['machine'].get('tensorflow', '-')}; "
        f"{data.get('date', '')}.",
        "",
    ]
    by_backbone = {}
    for r in res["runs"]:
        by_backbone.setdefault(r["backbone"], []).append(r)
    for backbone, runs in by_backbone.items():
        rows = []
        for r in runs:
            rows.append([
                r["variant"], r["policy"], _xla_cell(r),
                _fmt(r["ours"]["view_images_per_s"]), _fmt(r["tutorial"]["view_images_per_s"]),
                f"**{r['ratio']:.2f}**",
                " / ".join(f"{x:.2f}" for x in r.get("round_ratios", [])),
                f"{r['ours']['first_step_s']:.0f} / {r['tutorial']['first_step_s']:.0f}",
            ])
        lines += [f"**{backbone}**", "",
                  markdown_table(["variant", "policy", "XLA", "ours img/s", "tutorial img/s",
                                  "ours / tutorial", "per-round ratios",
                                  "first step s (ours / tut.)"], rows), ""]
    for sk in res.get("skipped", []):
        lines.append(f"- {sk['backbone']} {sk['variant']}: {sk['why']}")
    if res.get("max_step"):
        m = res["max_step"]
        lines.append(f"- Fastest step: {res['max_step_view_images_per_s']:,.0f} view-img/s "
                     f"({m['impl']}, {m['backbone']}, {m['variant']}): the input pipeline "
                     "must deliver at least this.")
    aug = res["augmentation"]
    lines.append(f"- ours: augmentation in {aug['ours']}.")
    lines.append("- tutorial: augmentation inside the model, applied twice and concatenated: "
                 + "; ".join(f"`{a.split('  #')[0]}`" for a in aug["tutorial"]) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
