"""Images/second of the contrastive ``tf.data`` input pipeline alone (no model).

On the CIFAR-10 subset at 32x32, batch ``B`` images x 2 views: the pipeline of
:func:`keras_supcon.data.contrastive_batches` (resize, shuffle, batch, two-view
augmentation, prefetch) is iterated for whole epochs (``.repeat()``; each epoch
refills the shuffle buffer) with a few variations of its settings, rebuilt here
with the library's own pieces (``resize_images``, ``make_views``) so each can be
switched on its own:

- ``augment``: ``batched`` (the library: one vectorised ``make_views`` call per
  batch, after ``batch``) or ``per_image`` (``map`` over single images before
  ``batch``, the usual tf.data way);
- ``parallel``: ``num_parallel_calls`` of the maps, ``AUTOTUNE`` or ``1``;
- ``cache``: ``.cache()`` of the resized images (the library's ``--cache``);
- ``prefetch``: ``.prefetch(AUTOTUNE)`` at the end, or none;
- ``resize_first``: resize before shuffling, not after (the library's order until
  2026-12-02; it shuffles the raw images unless it caches the resized ones).

``first batch s`` is the time from a fresh iterator to its first batch (median of 3):
Keras starts a new iterator each epoch, so the shuffle buffer's fill is paid once per
epoch on top of the steady rate.

The row ``library`` is ``contrastive_batches(...)`` itself, as training uses it.
img/s counts view-images (``2 * B`` per batch), as ``train_step`` does; the
pipeline / step column divides by the fastest step of ``train_step.json`` (from
the same results folder), the rate the pipeline has to sustain (target: 2x).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, markdown_table, save_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAME = "input_pipeline"
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
IMAGE_SIZE = 32
VIEWS = 2
TARGET = 2.0  # pipeline img/s should be at least this many times the fastest step's
# (name, augment, parallel, cache, prefetch, resize_first); "library" is contrastive_batches.
SETTINGS = [
    ("library", "batched", "autotune", False, True, False),
    ("batched", "batched", "autotune", False, True, False),
    ("batched, resize first", "batched", "autotune", False, True, True),
    ("batched, cache", "batched", "autotune", True, True, True),
    ("batched, no prefetch", "batched", "autotune", False, False, False),
    ("batched, parallel 1", "batched", 1, False, True, False),
    ("per-image", "per_image", "autotune", False, True, False),
    ("per-image, cache", "per_image", "autotune", True, True, True),
    ("per-image, parallel 1", "per_image", 1, False, True, False),
]


def log(*args):
    print(*args, flush=True)


def build_pipeline(ds, batch_size, *, augment="batched", parallel="autotune", cache=False,
                   prefetch=True, num_examples=None, seed=0, resize_first=False):
    """The library's contrastive pipeline with its settings exposed (see the module doc)."""
    import tensorflow as tf

    from keras_supcon.data.augment import CONTRASTIVE_POLICY, make_views
    from keras_supcon.data.pipeline import resize_images

    calls = tf.data.AUTOTUNE if parallel == "autotune" else int(parallel)

    if cache and not resize_first:
        raise ValueError("a cache holds resized images: cache=True needs resize_first=True")
    if resize_first:
        ds = resize_images(ds, IMAGE_SIZE, num_parallel_calls=calls)
    if cache:
        ds = ds.cache()
    buffer = max(min(num_examples or 10_000, 10_000), 1)
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if not resize_first:
        ds = resize_images(ds, IMAGE_SIZE, num_parallel_calls=calls)
    if augment == "batched":
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, y: (make_views(x, VIEWS, CONTRASTIVE_POLICY), y),
                    num_parallel_calls=calls)
    elif augment == "per_image":
        ds = ds.map(lambda x, y: (make_views(x[None], VIEWS, CONTRASTIVE_POLICY)[0], y),
                    num_parallel_calls=calls)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        raise ValueError(f"augment must be 'batched' or 'per_image'; got {augment!r}")
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds


def library_pipeline(ds, batch_size, num_examples):
    from keras_supcon.data import contrastive_batches

    return contrastive_batches(ds, IMAGE_SIZE, batch_size, views=VIEWS, shuffle=True, seed=0,
                               num_examples=num_examples)


def measure(ds, batch_size, *, batches, repeats, warmup):
    """Median and per-block view-images/s over ``repeats`` blocks of ``batches`` batches."""
    firsts = []
    for _ in range(3):
        t0 = time.perf_counter()
        next(iter(ds))
        firsts.append(time.perf_counter() - t0)
    it = iter(ds.repeat())
    t0 = time.perf_counter()
    for _ in range(warmup):
        views, _ = next(it)
    warm_s = time.perf_counter() - t0
    shape = tuple(views.shape)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            views, labels = next(it)
        _ = views.numpy().ravel()[0]  # (eager tensors are ready; this makes sure)
        rates.append(VIEWS * batch_size * batches / (time.perf_counter() - t0))
    return {"view_images_per_s": round(statistics.median(rates), 1),
            "source_images_per_s": round(statistics.median(rates) / VIEWS, 1),
            "block_view_images_per_s": [round(r, 1) for r in rates],
            "warmup_s": round(warm_s, 2), "batch_shape": list(shape),
            "first_batch_s": round(statistics.median(firsts), 3)}


def read_step(results_dir):
    """``(max step view-images/s, where)`` from ``train_step.json``, or ``(None, why)``."""
    path = Path(results_dir) / "train_step.json"
    if not path.exists():
        return None, f"{path.name} absent from {results_dir}: run benchmarks.train_step first"
    try:
        data = json.loads(path.read_text())
        res = data["results"]
        rate = res["max_step_view_images_per_s"]
        where = dict(res.get("max_step") or {}, date=data.get("date"),
                     quick=bool(res.get("settings", {}).get("quick")))
        return (float(rate) if rate else None), where
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"cannot read {path}: {exc}"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (a few batches)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=72,
                   help="batches per timed block (72: one epoch of the subset at batch 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.repeats, args.warmup = 3, 1, 1
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from keras_supcon.data import load_dataset

    started = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    n = data.sizes["train"]
    log(f"input_pipeline: {data.describe()}; batch {args.batch_size} x {VIEWS} views, "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}; {args.repeats} x {args.batches} batches per setting")
    rows = []
    for name, augment, parallel, cache, prefetch, resize_first in SETTINGS:
        if name == "library":
            ds = library_pipeline(data.train, args.batch_size, n)
        else:
            ds = build_pipeline(data.train, args.batch_size, augment=augment, parallel=parallel,
                                cache=cache, prefetch=prefetch, num_examples=n,
                                resize_first=resize_first)
        out = measure(ds, args.batch_size, batches=args.batches, repeats=args.repeats,
                      warmup=args.warmup)
        out.update(name=name, augment=augment, num_parallel_calls=str(parallel), cache=cache,
                   prefetch=prefetch, resize_first=resize_first)
        rows.append(out)
        log(f"  {name}: {out['view_images_per_s']:,.0f} view-img/s "
            f"(blocks {out['block_view_images_per_s']}), first batch {out['first_batch_s']} s")
    step_rate, step_where = read_step(args.results_dir)
    for r in rows:
        r["pipeline_over_step"] = (round(r["view_images_per_s"] / step_rate, 2)
                                   if step_rate else None)
    results = {
        "settings": {"dataset": str(args.dataset), "image_size": IMAGE_SIZE,
                     "batch_size": args.batch_size, "views": VIEWS,
                     "batches_per_block": args.batches, "repeats": args.repeats,
                     "warmup_batches": args.warmup, "train_examples": n, "quick": args.quick},
        "rows": rows,
        "max_step_view_images_per_s": step_rate,
        "max_step": step_where,
        "target_ratio": TARGET,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    command = "python -m benchmarks.input_pipeline" + (" " + " ".join(argv) if argv else "")
    data_out = save_results(NAME, results, command=command, results_dir=args.results_dir)
    log(markdown(data_out))
    return data_out


def markdown(data):
    """The settings table with view-images/s and pipeline / fastest-step ratios."""
    res = data["results"]
    s = res["settings"]
    step = res.get("max_step_view_images_per_s")
    rows = []
    for r in res["rows"]:
        ratio = r.get("pipeline_over_step")
        rows.append([
            f"`{r['name']}`" if r["name"] == "library" else r["name"],
            r["augment"].replace("_", "-"), r["num_parallel_calls"],
            "yes" if r["cache"] else "no", "yes" if r["prefetch"] else "no",
            f"{r['view_images_per_s']:,.0f}", f"{r['source_images_per_s']:,.0f}",
            f"{r['first_batch_s']:.2f}" if "first_batch_s" in r else "-",
            "-" if ratio is None else (f"**{ratio:.1f}x**" if r["name"] == "library"
                                       else f"{ratio:.1f}x"),
        ])
    lines = [
        f"`tf.data` contrastive pipeline alone (resize, shuffle, batch, two-view augmentation, "
        f"prefetch; no model), {s['image_size']}x{s['image_size']}, batch {s['batch_size']} "
        f"images x {s['views']} views, median of {s['repeats']} blocks of "
        f"{s['batches_per_block']} batches after {s['warmup_batches']} warm-up batches "
        f"(whole epochs: shuffle-buffer refills included). Command: `{data['command']}`; "
        f"{data['machine'].get('cpu', '')}, {data['machine'].get('cores')} cores; "
        f"{data.get('date', '')}.",
        "",
        markdown_table(["setting", "augmentation", "parallel calls", "cache", "prefetch",
                        "view img/s", "source img/s", "first batch s",
                        "pipeline / fastest step"], rows),
        "",
    ]
    if step:
        where = res.get("max_step") or {}
        lib = next((r for r in res["rows"] if r["name"] == "library"), None)
        verdict = ""
        if lib and lib.get("pipeline_over_step") is not None:
            ok = lib["pipeline_over_step"] >= res.get("target_ratio", TARGET)
            verdict = (f" The library's pipeline delivers {lib['pipeline_over_step']:.1f}x that "
                       f"({'meets' if ok else 'misses'} the {res.get('target_ratio', TARGET):g}x "
                       "target).")
        lines.append(f"- Fastest training step in `train_step.json`: {step:,.0f} view-img/s "
                     f"({where.get('impl', '?')}, {where.get('backbone', '?')}, "
                     f"{where.get('variant', '?')}; train_step.json of "
                     f"{where.get('date', '?')}{', --quick' if where.get('quick') else ''})."
                     f"{verdict} Measured alone: in training the "
                     "pipeline shares the CPU cores with the step.")
    else:
        why = res.get("max_step")
        why = why if isinstance(why, str) else "train_step.json holds no step rate"
        lines.append(f"- No pipeline / step ratio: {why}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
