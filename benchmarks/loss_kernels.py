"""Loss kernels: time and memory of one loss forward + backward against a floor.

For ``B`` images x 2 views (``N = 2B`` rows) of random embeddings of width ``D``,
each kernel computes a scalar and its gradient with respect to the embeddings:

- ``floor``: ``sum(z @ z.T)`` on ``z = [N, D]``: the bare similarity product (one
  ``N x N x D`` matrix product forward, two backward) and nothing else;
- ``supcon``: ``keras_supcon.losses.supcon_loss(features [B, 2, D], labels [B])``;
- ``npairs``: ``keras_supcon.losses.NPairsLoss()(labels, features [B, 2, D])``;
- ``naive``: the SupContrast reference (HobbitLong/SupContrast ``losses.py``)
  ported line by line, for context: :func:`naive_supcon_tf` / :func:`naive_supcon_jax`.

Modes: ``graph`` (``tf.function``) and ``xla`` (``tf.function(jit_compile=True)``);
under ``KERAS_BACKEND=jax`` only ``xla`` (``jax.jit(jax.value_and_grad(...))``).
Precisions: ``float32`` and ``mixed``: the embeddings arrive in the mixed policy's
compute dtype (``mixed_bfloat16`` on CPU, ``mixed_float16`` on GPU) and the floor
is computed in that dtype.

Memory: at each batch size of ``--memory-batch-sizes`` (8192 by default), each float32
kernel/mode runs once in a fresh process (``--memory-probe KERNEL MODE B D``); the
report gives the process RSS before the call (inputs created, function traced) and
its peak after, what the loss itself held (TensorFlow's allocator peak; under JAX the
compiled temporaries), as a multiple of one ``N x N`` float32 buffer (1 GiB at
B=8192) and per row of the batch.

Ratios: ``ratio`` is against the faster floor (graph or XLA) of the same row,
``mode_ratio`` (the tables' brackets) against the floor of the same mode; where the
floor does not fit in memory, against its ``N^2`` extrapolation.

Usage::

    python -m benchmarks.loss_kernels [--quick] [--batch-sizes 256,512] [--dims 128]
        [--results-dir DIR] [--memory-batch-sizes 8192]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    current_rss_bytes,
    machine_line,
    markdown_table,
    peak_rss_bytes,
    reset_peak_rss,
    save_results,
    time_call,
)

NAME = "loss_kernels"
KERNELS = ("floor", "supcon", "npairs", "naive")
# Peak memory of one forward + backward: N x N float32 buffers (measured by the memory
# probes at B = 1024-2048) plus bytes per row (the kernels: their blocks scale with N, at
# most 16.5 KiB a row measured since issue 24, 64 KiB assumed). A configuration whose
# estimate exceeds the memory available is skipped, not run into the OOM killer (the
# first full run lost its B = 8192 rows that way, to the naive kernel).
NXN_BUFFERS = {"floor": 3.0, "supcon": 0.0, "npairs": 0.0, "naive": 16.0}
ROW_BYTES = {"floor": 0, "supcon": 65536, "npairs": 65536, "naive": 0}


def estimated_bytes(kernel, batch_size):
    """The peak memory :data:`NXN_BUFFERS` and :data:`ROW_BYTES` predict for ``kernel``."""
    n = VIEWS * batch_size
    return NXN_BUFFERS[kernel] * n * n * 4 + ROW_BYTES[kernel] * n
MODES = ("graph", "xla")
PRECISIONS = ("float32", "mixed")
VIEWS = 2
NUM_CLASSES = 10
TEMPERATURE = 0.1  # supcon_loss's default; the naive port uses it too (base_temperature = T)

DEFAULT_BATCH_SIZES = (256, 512, 1024, 2048, 4096, 8192)
DEFAULT_DIMS = (128, 256)
QUICK_BATCH_SIZES = (16,)  # a smoke run: one size of each configuration
QUICK_DIMS = (8,)
PROBE_MARK = "MEMORY_PROBE "


# ------------------------------------------------------------------- backend
def backend():
    import keras

    return keras.backend.backend()


def has_gpu():
    if backend() == "jax":
        import jax

        return jax.default_backend() == "gpu"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def mixed_policy_name():
    """``mixed_float16`` on a GPU, ``mixed_bfloat16`` on CPU."""
    return "mixed_float16" if has_gpu() else "mixed_bfloat16"


def precision_dtype(precision):
    if precision == "float32":
        return "float32"
    import keras

    return keras.DTypePolicy(mixed_policy_name()).compute_dtype


def available_modes():
    return ("xla",) if backend() == "jax" else MODES


# ------------------------------------------------------------------- kernels
def naive_supcon_tf(features, labels, temperature=TEMPERATURE, base_temperature=TEMPERATURE):
    """HobbitLong/SupContrast ``SupConLoss.forward`` (``contrast_mode="all"``) in TensorFlow.

    Line by line, with two additions: the embeddings are L2-normalised first
    (SupContrast's model does it, ``F.normalize``) and cast to float32 first (as
    :func:`~keras_supcon.losses.supcon_loss` does), so that against ``supcon``
    only the algorithm differs.
    """
    import tensorflow as tf

    features = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
    batch_size = tf.shape(features)[0]
    labels = tf.reshape(labels, [-1, 1])
    mask = tf.cast(tf.equal(labels, tf.transpose(labels)), tf.float32)
    contrast_count = features.shape[1]
    contrast_feature = tf.concat(tf.unstack(features, axis=1), axis=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    # compute logits
    anchor_dot_contrast = tf.matmul(anchor_feature, tf.transpose(contrast_feature)) / temperature
    # for numerical stability
    logits_max = tf.reduce_max(anchor_dot_contrast, axis=1, keepdims=True)
    logits = anchor_dot_contrast - tf.stop_gradient(logits_max)
    # tile mask
    mask = tf.tile(mask, [anchor_count, contrast_count])
    # mask-out self-contrast cases (torch.scatter(ones_like(mask), 1, arange(n).view(-1, 1), 0))
    n = batch_size * anchor_count
    diagonal = tf.stack([tf.range(n), tf.range(n)], axis=1)
    logits_mask = tf.tensor_scatter_nd_update(tf.ones_like(mask), diagonal, tf.zeros([n]))
    mask = mask * logits_mask
    # compute log_prob
    exp_logits = tf.exp(logits) * logits_mask
    log_prob = logits - tf.math.log(tf.reduce_sum(exp_logits, axis=1, keepdims=True))
    # compute mean of log-likelihood over positive
    mean_log_prob_pos = tf.reduce_sum(mask * log_prob, axis=1) / tf.reduce_sum(mask, axis=1)
    # loss
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return tf.reduce_mean(tf.reshape(loss, [anchor_count, batch_size]))


def naive_supcon_jax(features, labels, temperature=TEMPERATURE, base_temperature=TEMPERATURE):
    """:func:`naive_supcon_tf` in ``jax.numpy`` (for ``KERAS_BACKEND=jax``)."""
    import jax
    import jax.numpy as jnp

    features = features.astype(jnp.float32)
    features = features / jnp.maximum(
        jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    batch_size = features.shape[0]
    labels = jnp.reshape(labels, (-1, 1))
    mask = jnp.equal(labels, labels.T).astype(jnp.float32)
    contrast_count = features.shape[1]
    contrast_feature = jnp.concatenate([features[:, v] for v in range(contrast_count)], axis=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    anchor_dot_contrast = jnp.matmul(anchor_feature, contrast_feature.T) / temperature
    logits_max = jnp.max(anchor_dot_contrast, axis=1, keepdims=True)
    logits = anchor_dot_contrast - jax.lax.stop_gradient(logits_max)
    mask = jnp.tile(mask, (anchor_count, contrast_count))
    n = batch_size * anchor_count
    logits_mask = jnp.ones_like(mask).at[jnp.arange(n), jnp.arange(n)].set(0.0)
    mask = mask * logits_mask
    exp_logits = jnp.exp(logits) * logits_mask
    log_prob = logits - jnp.log(jnp.sum(exp_logits, axis=1, keepdims=True))
    mean_log_prob_pos = jnp.sum(mask * log_prob, axis=1) / jnp.sum(mask, axis=1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return jnp.mean(jnp.reshape(loss, (anchor_count, batch_size)))


def loss_fn(kernel):
    """``fn(features [B, V, D], labels [B]) -> scalar`` for ``kernel`` on the current backend."""
    from keras import ops

    if kernel == "floor":
        def floor(features, labels):
            z = ops.reshape(features, (-1, features.shape[-1]))
            return ops.sum(ops.matmul(z, ops.transpose(z)))

        return floor
    if kernel == "supcon":
        from keras_supcon.losses import supcon_loss

        return lambda features, labels: supcon_loss(features, labels)
    if kernel == "npairs":
        from keras_supcon.losses import NPairsLoss

        loss = NPairsLoss()
        return lambda features, labels: loss(labels, features)
    if kernel == "naive":
        return naive_supcon_jax if backend() == "jax" else naive_supcon_tf
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def make_inputs(batch_size, dim, dtype, seed=0):
    """Random ``features [B, 2, D]`` (in ``dtype``) and int32 ``labels [B]`` in [0, 10)."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch_size, VIEWS, dim)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=batch_size).astype("int32")
    features = ops.cast(ops.convert_to_tensor(features), dtype)
    return features, ops.convert_to_tensor(labels)


def make_step(kernel, mode):
    """A compiled ``step(features, labels) -> (loss, grad wrt features)``."""
    fn = loss_fn(kernel)
    if mode not in available_modes():
        raise ValueError(f"mode {mode!r} is not available on the {backend()} backend")
    if backend() == "jax":
        import jax

        return jax.jit(jax.value_and_grad(fn))
    import tensorflow as tf

    def step(features, labels):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = fn(features, labels)
        return loss, tape.gradient(loss, features)

    return tf.function(step, jit_compile=(mode == "xla"))


def blocking(step, features, labels):
    """``fn()`` that runs ``step`` once and waits for the loss and the gradient."""
    if backend() == "jax":
        def run():
            loss, grad = step(features, labels)
            loss.block_until_ready()
            grad.block_until_ready()
            return loss

        return run

    def run():
        loss, grad = step(features, labels)
        grad.numpy()
        return loss.numpy()

    return run


# ------------------------------------------------------------------ timing
def nxn_bytes(batch_size):
    n = VIEWS * batch_size
    return n * n * 4


def measure(kernel, mode, batch_size, dim, precision, *, repeats, min_time):
    features, labels = make_inputs(batch_size, dim, precision_dtype(precision))
    run = blocking(make_step(kernel, mode), features, labels)
    last = {}

    def call():
        last["loss"] = run()

    start = time.perf_counter()
    seconds, times = time_call(call, warmup=1, repeats=repeats, min_time=min_time)
    wall = time.perf_counter() - start
    loss = float(last["loss"])
    return {"seconds": seconds, "times": times, "repeats": len(times),
            # the warmup call: tracing / compiling plus one run
            "first_call_seconds": max(wall - sum(times), 0.0),
            "wall_seconds": wall, "loss": loss if math.isfinite(loss) else str(loss)}


class Estimator:
    """Predicts a configuration's seconds per call (~ B^2 D) and wall time from the
    largest size measured so far of the same (kernel, mode, precision)."""

    def __init__(self, repeats, min_time):
        self.repeats, self.min_time = repeats, min_time
        self.points = {}

    def add(self, key, batch_size, dim, entry):
        if entry.get("seconds") is None:
            return
        overhead = max(entry["first_call_seconds"] - entry["seconds"], 0.0)
        old = self.points.get(key)
        if old is None or (batch_size, dim) >= old[:2]:
            self.points[key] = (batch_size, dim, entry["seconds"], overhead)

    def per_call(self, key, batch_size, dim):
        if key not in self.points:
            return None
        b, d, seconds, _ = self.points[key]
        return seconds * (batch_size / b) ** 2 * (dim / d)

    def wall(self, key, batch_size, dim, calls=None):
        """Tracing/compiling plus ``calls`` calls (default: warmup + timed repeats)."""
        t = self.per_call(key, batch_size, dim)
        if t is None:
            return None
        if calls is None:
            calls = 1 + max(self.repeats, math.ceil(self.min_time / max(t, 1e-9)))
        return self.points[key][3] + t * calls

    def remaining(self, configs, max_call_seconds):
        """Predicted wall seconds of ``(key, B, D, calls)`` configurations, None if unknown."""
        total = 0.0
        for key, batch_size, dim, calls in configs:
            t = self.per_call(key, batch_size, dim)
            if t is None:
                return None
            if t <= max_call_seconds:
                total += self.wall(key, batch_size, dim, calls)
        return total


def fmt_seconds(s):
    if s is None:
        return "n/a"
    if s < 0.1:
        return f"{s * 1e3:.2f} ms"
    if s < 100:
        return f"{s:.3g} s"
    return f"{s:.0f} s"


def fmt_duration(s):
    s = int(round(s))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def add_ratios(timings):
    """``ratio = seconds / min(floor seconds)``, the floor of the same (B, D, precision),
    and ``mode_ratio = seconds / floor seconds`` of the same mode. Where the floor did
    not fit in memory, ``mode_ratio`` is against its ``N^2`` extrapolation from the
    largest floor measured in that mode, D and precision (``mode_floor_extrapolated``)."""
    floors, measured = {}, {}
    for t in timings:
        if t["kernel"] == "floor" and t.get("seconds") is not None:
            key = (t["batch_size"], t["dim"], t["precision"])
            floors[key] = min(floors.get(key, math.inf), t["seconds"])
            line = (t["mode"], t["dim"], t["precision"])
            measured.setdefault(line, {})[t["batch_size"]] = t["seconds"]
    for t in timings:
        floor = floors.get((t["batch_size"], t["dim"], t["precision"]))
        done = t.get("seconds") is not None
        t["ratio"] = t["seconds"] / floor if floor is not None and done else None
        sizes = measured.get((t["mode"], t["dim"], t["precision"]), {})
        if t["batch_size"] in sizes:
            mode_floor, t["mode_floor_extrapolated"] = sizes[t["batch_size"]], False
        elif sizes and max(sizes) < t["batch_size"]:
            b = max(sizes)
            mode_floor = sizes[b] * (t["batch_size"] / b) ** 2
            t["mode_floor_extrapolated"] = True
        else:
            mode_floor = None
            t.pop("mode_floor_extrapolated", None)
        t["mode_ratio"] = t["seconds"] / mode_floor if mode_floor and done else None
    return timings


# ------------------------------------------------------------------ memory
def memory_probe(kernel, mode, batch_size, dim, precision="float32"):
    """Run one fwd+bwd in this (fresh) process and return its memory figures."""
    # One call at a tiny size first: the runtime's own start-up memory (thread
    # pools, oneDNN, the XLA compiler) then lies before the measurement.
    tiny = make_inputs(8, dim, precision_dtype(precision))
    blocking(make_step(kernel, mode), *tiny)()
    features, labels = make_inputs(batch_size, dim, precision_dtype(precision))
    step = make_step(kernel, mode)
    out = {"kernel": kernel, "mode": mode, "batch_size": batch_size, "dim": dim,
           "precision": precision, "nxn_bytes": nxn_bytes(batch_size)}
    if backend() == "jax":
        compiled = step.lower(features, labels).compile()  # compile before measuring
        try:
            analysis = compiled.memory_analysis()
        except Exception:  # noqa: BLE001 - not every jax/platform has it
            analysis = None
        if analysis is not None:
            out["compiled_temp_bytes"] = int(analysis.temp_size_in_bytes)
            out["compiled_argument_bytes"] = int(analysis.argument_size_in_bytes)
            out["compiled_output_bytes"] = int(analysis.output_size_in_bytes)
        step = compiled
    else:
        import tensorflow as tf

        step.get_concrete_function(features, labels)  # trace before measuring
        device = (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0]
    run = blocking(step, features, labels)
    out["peak_rss_before_bytes"] = peak_rss_bytes()  # e.g. importing TensorFlow
    out["peak_reset"] = reset_peak_rss()
    out["rss_before_bytes"] = current_rss_bytes()
    start = time.perf_counter()
    run()
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["first_call_extra_bytes"] = out["peak_rss_bytes"] - out["rss_before_bytes"]
    # The first call also pays for one-time work (graph optimisation, XLA compiling);
    # what the loss itself holds is the peak of a second call.
    reset_peak_rss()
    out["rss_before_second_bytes"] = current_rss_bytes()
    base = None
    if backend() != "jax":
        base, out["allocator_stats"] = allocator_baseline(device.name)
    run()
    out["extra_bytes"] = peak_rss_bytes() - out["rss_before_second_bytes"]
    if base is not None:
        # Peak of the tensors TensorFlow's allocator handed out during the call
        # (freed memory that malloc keeps makes RSS deltas a poor measure here).
        out["allocator_peak_bytes"] = int(
            tf.config.experimental.get_memory_info(device.name)["peak"]) - int(base)
        out["allocator_device"] = device.name
    if not out["peak_reset"] and out["peak_rss_bytes"] <= out["peak_rss_before_bytes"]:
        out["note"] = "peak RSS could not be reset and was not exceeded: an upper bound"
    # What the loss itself holds: the allocator's peak (TensorFlow), else the
    # compiled temporaries (jax), else the peak-RSS delta of the second call.
    out["measure"] = ("allocator" if "allocator_peak_bytes" in out
                      else "compiled" if "compiled_temp_bytes" in out else "rss")
    out["bytes"] = out[MEASURE_KEYS[out["measure"]]]
    out["nxn_buffers"] = out["bytes"] / out["nxn_bytes"]
    return out


# What a probe's ``bytes`` is, by ``measure``: the key it is copied from, and its description.
MEASURE_KEYS = {"allocator": "allocator_peak_bytes", "compiled": "compiled_temp_bytes",
                "rss": "extra_bytes"}
MEASURE_WORDS = {
    "allocator": "peak of TensorFlow's allocator during a second call "
                 "(`tf.config.experimental.get_memory_info`)",
    "compiled": "compiled temporaries (`memory_analysis().temp_size_in_bytes`)",
    "rss": "peak RSS during a second call minus RSS before it (a lower bound: memory "
           "that malloc kept from the first call is reused unseen)",
}


def probe_measure(entry):
    """The ``measure`` of a probe's ``bytes`` (inferred for results written before it was
    recorded)."""
    if "measure" in entry:
        return entry["measure"]
    return next((m for m in ("allocator", "compiled") if MEASURE_KEYS[m] in entry), "rss")


def allocator_baseline(device_name):
    """Reset the peak statistics of TensorFlow's allocator on ``device_name``;
    returns ``(bytes in use now, "kept")``, or ``(None, reason)`` where the
    allocator keeps no statistics (on a CPU, only the BFC allocator does: TensorFlow
    uses it there by default only with oneDNN, i.e. not on every machine;
    :func:`run_memory_probe` sets ``TF_CPU_ALLOCATOR_USE_BFC=true`` for it)."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats(device_name)
        return tf.config.experimental.get_memory_info(device_name)["current"], "kept"
    except ValueError as exc:
        return None, f"not kept ({exc}): measured by RSS instead"


def run_memory_probe(kernel, mode, batch_size, dim, timeout):
    """:func:`memory_probe` in a fresh ``python -m benchmarks.loss_kernels`` process."""
    cmd = [sys.executable, "-m", "benchmarks.loss_kernels", "--memory-probe",
           kernel, mode, str(batch_size), str(dim)]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The allocator whose statistics the probe reads (not TensorFlow's CPU default
    # on every machine); where it still keeps none, the probe measures RSS and says so.
    env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    entry = {"kernel": kernel, "mode": mode, "batch_size": batch_size, "dim": dim,
             "precision": "float32", "nxn_bytes": nxn_bytes(batch_size)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**entry, "error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    reason = ("killed (out of memory?)" if proc.returncode in (-9, 137)
              else f"exit {proc.returncode}")
    return {**entry, "error": f"{reason}: {' | '.join(tail)}"}


# -------------------------------------------------------------------- main
def _ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text, allowed, what):
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; expected some of {allowed}")
    return names


def available_memory_bytes():
    """``MemAvailable`` of /proc/meminfo (infinite where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def resumable_timings(args, results):
    """Timings of an unfinished earlier run with the same settings, by row key
    (``--resume``); an empty dict otherwise."""
    path = Path(args.results_dir) / f"{NAME}.json"
    if not args.resume or not path.exists():
        return {}
    old = json.loads(path.read_text())["results"]
    same = ("backend", "batch_sizes", "dims", "kernels", "modes", "precisions", "repeats",
            "min_time", "quick")
    if old.get("complete") or any(old.get(k) != results[k] for k in same):
        return {}
    return {(t["batch_size"], t["dim"], t["precision"], t["kernel"], t["mode"]): t
            for t in old["timings"] if t.get("seconds") is not None or t.get("skipped")}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and short repeats (a smoke test, not a measurement)")
    p.add_argument("--batch-sizes", type=_ints, help="B values (images; N = 2B rows)")
    p.add_argument("--dims", type=_ints, help="embedding widths D")
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--modes", default=None, help="graph,xla (jax: xla)")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--repeats", type=int, help="timed calls at least (default 3, quick 2)")
    p.add_argument("--min-time", type=float,
                   help="seconds of timed calls at least (default 1, quick 0)")
    p.add_argument("--max-call-seconds", type=float, default=120.0,
                   help="skip a configuration predicted to take longer per call")
    p.add_argument("--memory-batch-size", "--memory-batch-sizes", dest="memory_batch_sizes",
                   type=_ints, help="B values of the memory probes, comma-separated (default "
                   "8192, quick 64; 0 = none); several show how memory per row grows with N")
    p.add_argument("--memory-dim", type=int,
                   help="D of the memory probes (default: first of --dims)")
    p.add_argument("--memory-configs", default=None,
                   help="kernel:mode list for the memory probes (default all; quick supcon:graph)")
    p.add_argument("--memory-timeout", type=float, default=1800.0)
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of an unfinished run with the same settings")
    p.add_argument("--memory-probe", nargs=4, metavar=("KERNEL", "MODE", "B", "D"),
                   help="internal: measure one configuration in this process, print JSON")
    args = p.parse_args(argv)
    args.kernels = _names(args.kernels, KERNELS, "kernels")
    args.precisions = _names(args.precisions, PRECISIONS, "precisions")
    modes = available_modes()
    args.modes = _names(args.modes, modes, "modes") if args.modes else modes
    q = args.quick
    args.batch_sizes = args.batch_sizes or (QUICK_BATCH_SIZES if q else DEFAULT_BATCH_SIZES)
    args.dims = args.dims or (QUICK_DIMS if q else DEFAULT_DIMS)
    args.repeats = args.repeats or (2 if q else 3)
    if args.min_time is None:
        args.min_time = 0.0 if q else 1.0
    if args.memory_batch_sizes is None:
        args.memory_batch_sizes = (64,) if q else (8192,)
    args.memory_batch_sizes = tuple(b for b in args.memory_batch_sizes if b > 0)
    args.memory_dim = args.memory_dim or args.dims[0]
    if args.memory_configs is None:
        args.memory_configs = f"supcon:{args.modes[0]}" if q else ",".join(
            f"{k}:{m}" for k in args.kernels for m in args.modes)
    configs = []
    for item in (x.strip() for x in args.memory_configs.split(",") if x.strip()):
        kernel, _, mode = item.partition(":")
        _names(kernel, KERNELS, "memory kernel")
        _names(mode, modes, "memory mode")
        configs.append((kernel, mode))
    args.memory_configs = configs
    return args


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if backend() == "tensorflow":
        import tensorflow as tf

        # Each configuration gets its own tf.function on purpose: no retracing warnings.
        tf.get_logger().setLevel("ERROR")
    if args.memory_probe:
        kernel, mode, b, d = args.memory_probe
        print(PROBE_MARK + json.dumps(memory_probe(kernel, mode, int(b), int(d))), flush=True)
        return 0

    command = "python -m benchmarks.loss_kernels " + " ".join(argv)
    rows = [(b, d, p) for b in args.batch_sizes for d in args.dims for p in args.precisions]
    configs = [(k, m) for k in args.kernels for m in args.modes]
    results = {
        "backend": backend(),
        "mixed_policy": mixed_policy_name(),
        "dtypes": {p: precision_dtype(p) for p in args.precisions},
        "views": VIEWS, "num_classes": NUM_CLASSES, "temperature": TEMPERATURE,
        "batch_sizes": list(args.batch_sizes), "dims": list(args.dims),
        "kernels": list(args.kernels), "modes": list(args.modes),
        "precisions": list(args.precisions),
        "repeats": args.repeats, "min_time": args.min_time, "quick": args.quick,
        "complete": False, "timings": [], "memory": [],
    }
    print(f"loss_kernels on {backend()}: {len(rows)} rows x {len(configs)} kernel/modes, "
          f"then {len(args.memory_configs) * len(args.memory_batch_sizes)} memory probes",
          flush=True)
    previous = resumable_timings(args, results)
    start = time.perf_counter()
    # Memory probes first, while this process is small: it keeps the memory its
    # timings freed, and probes started beside a large process compete for RAM.
    probes = [(k, m, b) for b in args.memory_batch_sizes for k, m in args.memory_configs]
    for j, (kernel, mode, b) in enumerate(probes):
        need = estimated_bytes(kernel, b)
        if need > 0.8 * available_memory_bytes():
            entry = {"kernel": kernel, "mode": mode, "batch_size": b, "dim": args.memory_dim,
                     "error": f"skipped: needs about {fmt_bytes(need)}"}
        else:
            entry = run_memory_probe(kernel, mode, b, args.memory_dim, args.memory_timeout)
        if "bytes" in entry:
            entry["bytes_per_row"] = entry["bytes"] / (VIEWS * b)
        results["memory"].append(entry)
        save_results(NAME, results, command=command, results_dir=args.results_dir)
        what = entry.get("error") or (f"{fmt_bytes(entry['bytes'])} "
                                      f"({entry['nxn_buffers']:.2f} N x N float32, "
                                      f"{entry['bytes_per_row'] / 1024:.1f} KiB a row)")
        print(f"[memory {j + 1}/{len(probes)}] {kernel} {mode} B={b} D={args.memory_dim}: "
              f"{what} | elapsed {fmt_duration(time.perf_counter() - start)}", flush=True)

    est = Estimator(args.repeats, args.min_time)
    start = time.perf_counter()
    for i, (b, d, precision) in enumerate(rows):
        cells = []
        for kernel, mode in configs:
            key = (kernel, mode, precision)
            entry = {"batch_size": b, "n": VIEWS * b, "dim": d, "precision": precision,
                     "dtype": precision_dtype(precision), "kernel": kernel, "mode": mode}
            predicted = est.per_call(key, b, d)
            need = estimated_bytes(kernel, b)
            done = previous.get((b, d, precision, kernel, mode))
            if done is not None:
                entry = done
            elif need > 0.8 * available_memory_bytes():
                entry.update(seconds=None,
                             skipped=f"needs about {fmt_bytes(need)}, more than "
                                     f"this machine has free")
            elif predicted is not None and predicted > args.max_call_seconds:
                entry.update(seconds=None,
                             skipped=f"predicted {predicted:.0f} s per call > "
                                     f"--max-call-seconds {args.max_call_seconds:g}")
            else:
                try:
                    entry.update(measure(kernel, mode, b, d, precision,
                                         repeats=args.repeats, min_time=args.min_time))
                except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                    entry.update(seconds=None, error=f"{type(exc).__name__}: {exc}"[:500])
            est.add(key, b, d, entry)
            results["timings"].append(entry)
            cells.append(f"{kernel} {mode} {fmt_seconds(entry.get('seconds'))}")
        add_ratios(results["timings"])
        save_results(NAME, results, command=command, results_dir=args.results_dir)
        elapsed = time.perf_counter() - start
        todo = [((k, m, p), bb, dd, None) for bb, dd, p in rows[i + 1:] for k, m in configs]
        # memory probes: one call each, plus ~10 s to start a process
        todo += [((k, m, "float32"), b, args.memory_dim, 1)
                 for b in args.memory_batch_sizes for k, m in args.memory_configs]
        eta = est.remaining(todo, args.max_call_seconds)
        if eta is not None:
            eta += 10 * len(args.memory_configs) * len(args.memory_batch_sizes)
        eta = "?" if eta is None else fmt_duration(eta)
        print(f"[{i + 1}/{len(rows)}] B={b} D={d} {precision}: " + ", ".join(cells)
              + f" | elapsed {fmt_duration(elapsed)}, remaining ~{eta}", flush=True)

    results["complete"] = True
    data = save_results(NAME, results, command=command, results_dir=args.results_dir)
    print(markdown(data), flush=True)
    failed = [t for t in results["timings"] if t.get("error")] + [
        m for m in results["memory"] if m.get("error")]
    if failed:
        print(f"{len(failed)} configuration(s) failed; see 'error' in the results", flush=True)
    return 0


# ---------------------------------------------------------------- markdown
def fmt_bytes(n):
    if n is None:
        return "n/a"
    if abs(n) >= 2**30 / 10:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _cell(t):
    if t is None:
        return ""
    if t.get("seconds") is None:
        return "skipped" if t.get("skipped") else "failed"
    ratio = ""
    if t.get("mode_ratio") is not None:
        ratio = f" ({'~' if t.get('mode_floor_extrapolated') else ''}{t['mode_ratio']:.2f}x)"
    return fmt_seconds(t["seconds"]) + ratio


def markdown(data):
    """The time table (seconds and ratio to the floor), the memory table and the machine."""
    r = data["results"]
    configs = [(k, m) for k in r["kernels"] for m in r["modes"]]
    by_key = {(t["batch_size"], t["dim"], t["precision"], t["kernel"], t["mode"]): t
              for t in r["timings"]}
    rows = []
    for b in r["batch_sizes"]:
        for d in r["dims"]:
            for p in r["precisions"]:
                cells = [by_key.get((b, d, p, k, m)) for k, m in configs]
                if all(c is None for c in cells):
                    continue
                rows.append([b, VIEWS * b, d, f"{p} ({r['dtypes'][p]})"]
                            + [_cell(c) for c in cells])
    header = ["B", "N", "D", "precision"] + [f"{k} {m}" for k, m in configs]
    mode_words = {"graph": "`tf.function`", "xla": "`tf.function(jit_compile=True)`"}
    if r["backend"] == "jax":
        mode_words = {"xla": "`jax.jit(jax.value_and_grad(...))`"}
    parts = [
        "Forward + backward (gradient with respect to the embeddings) of each loss on random "
        f"embeddings of B images x {VIEWS} views (N = {VIEWS}B rows) of width D, labels in "
        f"[0, {r['num_classes']}). `floor` is `sum(z @ z.T)` on `z = [N, D]`: the same matrix "
        "products with no softmax; `supcon` is `supcon_loss`, `npairs` is `NPairsLoss`, "
        "`naive` is the SupContrast reference ported line by line. Modes: "
        + ", ".join(f"{m} = {w}" for m, w in mode_words.items())
        + f". `mixed`: the embeddings arrive in the compute dtype of `{r['mixed_policy']}`, "
        "and the floor is computed in it. Each cell: median seconds per call and, in "
        "brackets, the ratio to the floor of its row in the same mode (`~`: the floor "
        "did not fit in memory; its time extrapolated as N^2 from the largest N it ran at)."
        + ("" if r.get("complete") else " **(partial run)**"),
        markdown_table(header, rows),
    ]
    memory = r.get("memory") or []
    if memory:
        mem_modes = [m for m in r["modes"] if any(e["mode"] == m for e in memory)]
        mem_by = {(e["kernel"], e["batch_size"], e["mode"]): e for e in memory}
        measures = {key: probe_measure(e) for key, e in mem_by.items() if not e.get("error")}
        kinds = list(dict.fromkeys(measures.values()))
        sizes = sorted({e["batch_size"] for e in memory})
        mem_rows = []
        for k in r["kernels"]:
            for b in sizes:
                if not any((k, b, m) in mem_by for m in mem_modes):
                    continue
                cells = []
                for m in mem_modes:
                    e = mem_by.get((k, b, m))
                    if e is None:
                        cells.append("")
                    elif e.get("error"):
                        cells.append("failed: " + e["error"][:80])
                    else:
                        tag = f" [{measures[(k, b, m)]}]" if len(kinds) > 1 else ""
                        per_row = e["bytes"] / (VIEWS * b) / 1024
                        cells.append(f"{fmt_bytes(e['bytes'])} ({e['nxn_buffers']:.2f}x, "
                                     f"{per_row:.1f} KiB a row){tag}")
                mem_rows.append([k, VIEWS * b] + cells)
        e0 = memory[0]
        source = "; ".join(f"{MEASURE_WORDS[m]} [{m}]" if len(kinds) > 1 else MEASURE_WORDS[m]
                           for m in kinds) or "no probe finished"
        parts += [
            f"Memory of one float32 forward + backward at D = {e0['dim']}, each in a fresh "
            f"process: {source}; in brackets, as a multiple of one N x N float32 buffer and "
            "per row of the batch.",
            markdown_table(["kernel", "N"] + mem_modes, mem_rows),
        ]
    parts.append(f"*{machine_line(data['machine'])}; {data.get('date', '')}; "
                 f"`{data.get('command', '')}`*")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
