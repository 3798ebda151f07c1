"""A short SupCon + linear-probe run on real CIFAR-10 images lands well above chance.

Moved out of the unit suite (it was
tests/test_train.py::test_supcon_learns_on_the_real_cifar10_subset, 253 s on an AVX2
machine): the suite keeps a smoke test of the same path on its 1,000-image fixture; this
script makes the learning claim on the shared subset (4,653 train / 517
validation / 1,017 test images) and exits non-zero when it does not hold.

    python experiments/cifar_short_run.py                     # ../shared/data/cifar10_subset.npz
    python experiments/cifar_short_run.py --dataset cifar10_subset.npz --out runs/cifar_short

The run: small_resnet at 16 pixels (a quarter of the cost of 32), 5 SupCon epochs (with
BatchNorm over both views together, 3 epochs gave 0.17-0.18 at 32 pixels), 3 linear epochs,
batch 128. The claim: test accuracy > 0.2 and the encoder's kNN accuracy > 0.3 (chance: 0.1).
Result: docs/results.md.
"""

import argparse
import sys
from pathlib import Path

DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"
SETTINGS = dict(backbone="small_resnet", image_size=16, epochs=5, linear_epochs=3,
                batch_size=128, verbose=0)
FLOORS = {"accuracy": 0.2, "knn_accuracy": 0.3}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--out", default="runs/cifar_short_run")
    args = p.parse_args(argv)
    from keras_supcon.training import train

    metrics = train(out=args.out, dataset=args.dataset, overwrite=True, **SETTINGS)
    got = {"accuracy": metrics["accuracy"], "knn_accuracy": metrics["embedding"]["knn_accuracy"]}
    print(f"test images {metrics['num_examples']}: " +
          ", ".join(f"{k} {v:.4f} (floor {FLOORS[k]})" for k, v in got.items()))
    if any(got[k] <= floor for k, floor in FLOORS.items()):
        sys.exit("below the floor: SupCon did not learn on the CIFAR-10 subset")


if __name__ == "__main__":
    main()
