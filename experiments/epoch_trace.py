"""Diagnosis: an end-to-end run's validation accuracy and loss, and its test accuracy, after
every epoch (the weights each epoch ended with, BatchNorm statistics made precise before the
epoch's validation pass). The test column explains a gap; it never chooses anything.

    python experiments/epoch_trace.py --backbone resnet50 --loss ce --seed 0 \\
        --out runs/diag_r50/defaults-s0

Trains the run as ``python -m keras_supcon.train`` would (``--set SETTING=VALUE`` for any other
setting), keeps each epoch's weights under OUT.epochs/ while it runs, then writes
OUT.trace.json and prints one row per epoch. Results: docs/experiments.md, section 0f.
"""

import argparse
import json
import shutil
from pathlib import Path

import keras_supcon  # noqa: F401  (first: it sets the oneDNN variables before TensorFlow loads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="small_resnet")
    p.add_argument("--loss", default="ce")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE")
    args = p.parse_args(argv)

    import keras
    import numpy as np

    from keras_supcon.data import supervised_batches
    from keras_supcon.training import TrainConfig, stages, train
    from keras_supcon.training.ablation import parse_grid
    from keras_supcon.training.settings import load_data

    extra = {name: values[0] for name, values in parse_grid(args.set).items()}
    config = TrainConfig(backbone=args.backbone, loss=args.loss, seed=args.seed, out=args.out,
                         verbose=2, **extra).validate()
    weights, rows, seen = Path(args.out + ".epochs"), [], {}
    weights.mkdir(parents=True, exist_ok=True)

    class Trace(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen["model"] = self.model
            self.model.save_weights(str(weights / f"e{epoch + 1}.weights.h5"))
            rows.append({"epoch": epoch + 1, "accuracy": logs.get("accuracy"),
                         "val_accuracy": logs.get("val_accuracy"),
                         "val_loss": logs.get("val_loss")})

    real = stages.stage_callbacks
    stages.stage_callbacks = lambda *a, **k: real(*a, **k) + [Trace()]
    metrics = train(config, overwrite=True)
    test = supervised_batches(load_data(config).test, config.image_size, config.batch_size)
    labels = np.concatenate([y.numpy() for _, y in test])
    for row in rows:
        seen["model"].load_weights(str(weights / f"e{row['epoch']}.weights.h5"))
        predicted = seen["model"].predict(test, verbose=0).argmax(-1)
        row["test_accuracy"] = float((predicted == labels).mean())
    shutil.rmtree(weights)
    Path(args.out + ".trace.json").write_text(json.dumps(
        {"rows": rows, "accuracy": metrics["accuracy"],
         "knn_accuracy": metrics["embedding"]["knn_accuracy"]}, indent=1))
    print("| epoch | train accuracy (augmented) | validation accuracy | validation loss "
          "| test accuracy |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['accuracy']:.4f} | {r['val_accuracy']:.4f} | "
              f"{r['val_loss']:.4f} | {r['test_accuracy']:.4f} |")
    print(f"run: test accuracy {metrics['accuracy']:.4f}, "
          f"kNN {metrics['embedding']['knn_accuracy']:.4f}")


if __name__ == "__main__":
    main()
