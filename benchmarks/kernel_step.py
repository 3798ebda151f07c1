"""The SupCon training step with this tree's loss kernel against a git revision's, in one
process: did a change to ``keras_supcon/losses/kernel.py`` slow the default step?

The step is :mod:`benchmarks.train_step`'s ``ours`` (the library's pipeline, model, loss and
optimizer at 32x32 on the CIFAR-10 subset, batch 64 x 2 views); two such models are built,
one whose :class:`~keras_supcon.losses.SupConLoss` runs this tree's kernel and one whose loss
runs the kernel of ``--revision`` (its ``kernel.py`` read with ``git show``), and they
alternate for ``--rounds`` timed rounds after a warm-up, as ``train_step`` does::

    python -m benchmarks.kernel_step --revision ad779a7 --backbone small_resnet

prints view-images per second of each and their ratio (this tree / the revision), round by
round and overall, and saves ``benchmarks/results/kernel_step.json``.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, save_results
from benchmarks.train_step import DEFAULT_DATASET, SUPCON_TEMPERATURE, VIEWS, _fit, build_ours

NAME = "kernel_step"


def kernel_at(revision):
    """The module ``keras_supcon/losses/kernel.py`` as it was at ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:keras_supcon/losses/kernel.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "kernel_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"kernel_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loss_with_kernel(module):
    """``SupConLoss(temperature)`` whose kernel is ``module``'s ``batch_softmax_loss``."""
    from keras_supcon.losses import SupConLoss
    from keras_supcon.losses.similarity import flatten_views

    class RevisionSupCon(SupConLoss):
        def call(self, y_true, y_pred):
            z, labels, _ = flatten_views(y_pred, y_true)
            return module.batch_softmax_loss(z, labels, temperature=self.temperature,
                                             mode="supcon_out")

    return RevisionSupCon(temperature=SUPCON_TEMPERATURE)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--revision", default="ad779a7", help="git revision of the other kernel")
    p.add_argument("--backbone", default="small_resnet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and model")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    args = p.parse_args(argv)
    import keras

    from keras_supcon.data import load_dataset

    data = load_dataset(args.dataset, seed=0)
    total = args.warmup + args.rounds * (args.steps + 1)
    models = {}
    for name, module in (("tree", None), (args.revision, kernel_at(args.revision))):
        keras.utils.set_random_seed(0)
        model, ds, kw = build_ours(args.backbone, data, args.batch_size, total)
        if module is not None:
            kw["loss"] = loss_with_kernel(module)
        model.compile(**kw)
        _fit(model, ds, args.warmup)
        models[name] = (model, ds, [])
    for r in range(args.rounds):
        for name, (model, ds, rates) in models.items():
            ends = _fit(model, ds, args.steps + 1)  # the first batch of a fit is not timed
            rates.append(VIEWS * args.batch_size * args.steps / (ends[-1] - ends[0]))
            print(f"round {r + 1}/{args.rounds} {name}: {rates[-1]:.0f} view-img/s", flush=True)
    tree, other = (models[k][2] for k in ("tree", args.revision))
    results = {"backbone": args.backbone, "batch_size": args.batch_size, "views": VIEWS,
               "revision": args.revision, "tree_view_images_per_s": [round(x, 1) for x in tree],
               "revision_view_images_per_s": [round(x, 1) for x in other],
               "round_ratios": [round(a / b, 3) for a, b in zip(tree, other)],
               "ratio": round(sum(tree) / sum(other), 3)}
    print(f"this tree / {args.revision}: {results['ratio']:.3f} "
          f"(rounds {results['round_ratios']})")
    command = "python -m benchmarks.kernel_step" + (" " + " ".join(argv) if argv else "")
    save_results(NAME, results, command=command)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
