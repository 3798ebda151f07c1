"""Seconds per SupCon training step of each backbone under each CPU kernel path.

One step at the library's default settings: a batch of 64 images x 2 views at 32x32
(random pixels: the step's cost does not depend on them), the encoder, the projection
head, SupCon and Adam (``model.train_on_batch``, graph mode). Each (kernel path,
backbone) runs in a fresh process, since the paths are chosen by environment variables
read when TensorFlow starts:

- ``eigen``: ``TF_ENABLE_ONEDNN_OPTS=0``, TensorFlow's own default on an AVX2-only CPU
  (it enables oneDNN by default only with AVX512_VNNI / AVX512_BF16 / AVX_VNNI / AMX):
  what our AVX2 machine kind ran before keras_supcon asked for oneDNN;
- ``onednn-avx2``: oneDNN capped at AVX2 (``keras_supcon._cpu.cap_isa("avx2")``): what
  the AVX2 kind runs now, and the test suite's ``--isa avx2``;
- ``onednn``: oneDNN at the CPU's own ISA (AVX-512 on the fast kind).

    python -m benchmarks.backbone_step                       # 3 paths x resnet50, densenet201
    python -m benchmarks.backbone_step --layers resnet50 --paths eigen,onednn-avx2

``--layers NAME``: instead, forward + backward of each convolution / BatchNorm / Dense
layer of NAME alone on its own input shape (batch 128 = 64 images x 2 views), the
slowest layers and the total per layer kind: where the step's time goes.
Ratios are only meaningful within one run (one machine, one load).
"""

import argparse
import json
import os
import subprocess
import sys

PATHS = {
    "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "onednn-avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", "isa": "avx2"},  # + _cpu.cap_isa("avx2")
    "onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
}
BATCH, VIEWS, SIZE = 64, 2, 32


def step_seconds(backbone, steps):
    import statistics
    import time

    import keras
    import numpy as np

    from keras_supcon import losses, models

    encoder = models.set_batchnorm_momentum(models.build_encoder(backbone, image_size=SIZE), 0.9)
    head = models.build_projection_head(encoder.output_shape[-1])
    model = models.build_contrastive_model(encoder, head)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.SupConLoss())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, VIEWS, SIZE, SIZE, 3)).astype("float32")
    y = np.arange(BATCH) % 10
    model.train_on_batch(x, y)  # tracing
    model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layer_seconds(backbone, top):
    import collections
    import time

    import keras
    import tensorflow as tf

    from keras_supcon import models

    encoder = models.build_encoder(backbone, image_size=SIZE)
    kinds = (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.Dense)
    rows, totals = [], collections.Counter()
    for layer in encoder._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, kinds):
            continue
        x = tf.random.normal((BATCH * VIEWS,) + tuple(layer.input.shape[1:]))
        clone = layer.__class__.from_config(layer.get_config())
        clone.build(x.shape)

        @tf.function(reduce_retracing=True)
        def fwd_bwd(x, clone=clone):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = tf.reduce_sum(clone(x, training=True))
            return tape.gradient(out, [x] + clone.trainable_variables)

        fwd_bwd(x)
        t0 = time.perf_counter()
        for _ in range(2):
            fwd_bwd(x)
        seconds = (time.perf_counter() - t0) / 2
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.Conv2D):
            kind += f" {layer.kernel_size[0]}x{layer.kernel_size[1]}/{layer.strides[0]}"
        totals[kind] += seconds
        rows.append({"layer": layer.name, "kind": kind, "input": list(layer.input.shape[1:]),
                     "seconds": seconds})
    rows.sort(key=lambda r: -r["seconds"])
    return {"slowest": rows[:top], "by_kind": dict(totals.most_common()),
            "total": sum(totals.values())}


def child(args):
    if args.layers:
        result = layer_seconds(args.layers, args.top)
    else:
        result = {"seconds_per_step": step_seconds(args.backbone, args.steps)}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(path, argv):
    """The child's environment carries the path, so it holds before the child imports
    TensorFlow (importing keras_supcon imports it)."""
    from keras_supcon._cpu import cap_isa

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    settings = dict(PATHS[path])
    cap_isa(settings.pop("isa", "native"), env)
    env.update(settings)
    cmd = [sys.executable, "-m", "benchmarks.backbone_step", "--child", *argv]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{path}: child failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbone_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="resnet50,densenet201")
    p.add_argument("--paths", default=",".join(PATHS), help="kernel paths: " + ", ".join(PATHS))
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after 2 untimed")
    p.add_argument("--layers", default=None, metavar="BACKBONE",
                   help="per-layer forward + backward times of this backbone instead")
    p.add_argument("--top", type=int, default=8, help="--layers: the slowest N layers")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    from keras_supcon._cpu import cpu_kind

    paths = args.paths.split(",")
    print(f"cpu: {cpu_kind()}; batch {BATCH} x {VIEWS} views at {SIZE}x{SIZE}")
    if args.layers:
        for path in paths:
            res = run_child(path, ["--layers", args.layers, "--top", str(args.top)])
            print(f"\n{args.layers}, {path}: {res['total']:.2f} s over all layers")
            for kind, s in res["by_kind"].items():
                print(f"  {kind:<24} {s:7.3f} s")
            for r in res["slowest"]:
                print(f"  {r['seconds']:7.3f} s  {r['layer']:<24} {r['kind']:<14} in {r['input']}")
        return
    backbones = args.backbones.split(",")
    rows = {}
    for path in paths:
        for backbone in backbones:
            rows[path, backbone] = run_child(
                path, ["--backbone", backbone, "--steps", str(args.steps)])["seconds_per_step"]
    header = "| kernel path | " + " | ".join(f"{b} s/step" for b in backbones)
    ratio = len(backbones) > 1
    print("\n" + header + (f" | {backbones[0]} / {backbones[1]} |" if ratio else " |"))
    print("|---" * (len(backbones) + 1 + ratio) + "|")
    for path in paths:
        cells = " | ".join(f"{rows[path, b]:.2f}" for b in backbones)
        extra = f" | {rows[path, backbones[0]] / rows[path, backbones[1]]:.2f}x" if ratio else ""
        print(f"| `{path}` | {cells}{extra} |")


if __name__ == "__main__":
    main()
