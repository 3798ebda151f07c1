"""SupCon forward + backward at one batch size with several rows per kernel block,
against the similarity-product floor, in graph mode and under XLA, in one process.

This is how ``keras_supcon.losses.kernel.MIN_BLOCK_ROWS`` was chosen
(docs/performance.md, "XLA at B = 8192")::

    python -m benchmarks.block_rows --batch-size 8192 --dim 128 --rows 128,256,512,1024

Each cell: the median of 3 timed calls after a first (tracing / compiling) one,
and its ratio to the faster floor.
"""

import argparse
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.block_rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8192, help="B images (N = 2B rows)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rows", default="128,256,512,1024", help="rows per block to time")
    p.add_argument("--modes", default="graph,xla")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from keras_supcon.losses import kernel

    rng = np.random.default_rng(0)
    z = tf.constant(rng.normal(size=(2 * args.batch_size, args.dim)).astype("float32"))
    y = tf.constant(np.repeat(rng.integers(0, 10, args.batch_size), 2))
    modes = args.modes.split(",")

    def median_seconds(fn):
        fn(z)[1].numpy()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(z)[1].numpy()
            times.append(time.perf_counter() - start)
        return sorted(times)[1]

    def floor(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(tf.matmul(z, z, transpose_b=True))
        return loss, tape.gradient(loss, z)

    def supcon(rows):
        def step(z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = kernel.batch_softmax_loss(z, y, temperature=0.1, mode="supcon_out",
                                                 block_rows=rows)
            return loss, tape.gradient(loss, z)
        return step

    seconds = {("floor", m): median_seconds(tf.function(floor, jit_compile=m == "xla"))
               for m in modes}
    for mode in modes:
        for rows in (int(r) for r in args.rows.split(",")):
            seconds[(f"{rows} rows", mode)] = median_seconds(
                tf.function(supcon(rows), jit_compile=mode == "xla"))
    best_floor = min(seconds[("floor", m)] for m in modes)
    print(f"B={args.batch_size} (N={2 * args.batch_size}) D={args.dim}")
    print("| kernel | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for name in dict.fromkeys(k for k, _ in seconds):
        cells = [f"{seconds[(name, m)]:.3f} s ({seconds[(name, m)] / best_floor:.2f}x)"
                 for m in modes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
