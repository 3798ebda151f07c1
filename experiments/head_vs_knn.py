"""A classifier below its own encoder's kNN vote: a fault of the classifier, or noise?

For each finished run directory, on the validation and the test split:

- ``head``: the run's classifier (for ce / supcon+ce the softmax trained end to end, its
  epoch chosen on validation; after pre-training the run's probe);
- ``kNN``: the vote of metrics.json (k = 20, cosine, the training split as index);
- ``probe``: the library's linear probe fitted again on the frozen encoder's features of
  the training split (L-BFGS, C chosen on validation, no refit): the best linear
  classifier of those features, so a head well below it is a head that did not fit.

On test, each pair of the three is compared image by image (McNemar's exact test: "a
only" / "b only" count the images one of them gets right and the other wrong; p is the
two-sided binomial probability of a split at least this uneven when neither is better).
A head below the kNN vote whose probe is below it too is the linear read-out of those
features, not a head that failed; a head below its probe is a head that did not fit.

    python experiments/head_vs_knn.py runs/cifar_budget_refit/ce-e160-s0 [RUN ...]
        [--out runs/head_vs_knn.json]

Results: docs/results.md ("The classifier against the kNN vote").
"""

import argparse
import json
from pathlib import Path

import numpy as np

import keras_supcon  # noqa: F401  (before keras: the backend and logging set-up)

PAIRS = (("head", "kNN"), ("head", "probe"), ("probe", "kNN"))


def compare(run_dir):
    """The comparison of one run directory (a dict: one block per split)."""
    import keras

    from keras_supcon.data import supervised_batches
    from keras_supcon.evaluation import knn_predict, predict
    from keras_supcon.evaluation.metrics import mcnemar
    from keras_supcon.training import build
    from keras_supcon.training.probe import encode, fit_logistic_probe
    from keras_supcon.training.settings import TrainConfig, load_data

    run_dir = Path(run_dir)
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())["settings"])
    data = load_data(config)
    classifier = keras.models.load_model(run_dir / "classifier.keras")
    encoder = classifier.get_layer(build.encoder_name(config))
    size = config.image_size
    feats = {name: encode(encoder, getattr(data, name), size)
             for name in ("train", "val", "test")}
    num_classes = len(data.class_names)
    kernel, bias, report = fit_logistic_probe(feats["train"], feats["val"], num_classes)
    out = {"run": str(run_dir), "loss": config.loss, "epochs": config.epochs,
           "seed": config.seed, "probe_C": report["C"]}
    for split in ("val", "test"):
        x, y = feats[split]
        probs, labels = predict(classifier, supervised_batches(getattr(data, split), size, 256))
        assert np.array_equal(labels, y)
        right = {"head": probs.argmax(1) == y,
                 "kNN": knn_predict(*feats["train"], x, num_classes=num_classes) == y,
                 "probe": (x @ kernel + bias).argmax(1) == y}
        out[split] = {k: float(v.mean()) for k, v in right.items()}
        out[split]["images"] = int(len(y))
        if split == "test":
            out["pairs"] = {f"{a} vs {b}": dict(zip(("first_only", "second_only", "p"),
                                                    mcnemar(right[a], right[b])))
                            for a, b in PAIRS}
    return out


def table(rows):
    pairs = [f"{a} vs {b} (test)" for a, b in PAIRS]
    lines = ["| run | val head | val kNN | val probe | test head | test kNN | test probe | "
             + " | ".join(pairs) + " |", "|" + "---|" * (7 + len(pairs))]
    for r in rows:
        v, t = r["val"], r["test"]
        cells = [f"{c['first_only']} / {c['second_only']}, p = {c['p']:.2g}"
                 for c in r["pairs"].values()]
        lines.append(f"| {Path(r['run']).name} | {v['head']:.4f} | {v['kNN']:.4f} | "
                     f"{v['probe']:.4f} | {t['head']:.4f} | {t['kNN']:.4f} | {t['probe']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--out", default="runs/head_vs_knn.json")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (Path(run) / "metrics.json").exists():
            raise SystemExit(f"error: {run} is not a finished run directory (no metrics.json)")
    rows = [compare(run) for run in args.runs]
    from keras_supcon.runs.rundir import RunDir

    out = Path(args.out)
    RunDir(out.parent).write_json(out.name, {"runs": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
