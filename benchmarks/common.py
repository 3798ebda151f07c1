"""Pieces every benchmark shares: timing, the machine description, results on disk.

Each benchmark module (``loss_kernels``, ``train_step``, ``input_pipeline``) has
``main(argv)``: it measures, writes ``benchmarks/results/<name>.json`` (atomically)
and prints its markdown table. ``benchmarks/run.py`` runs them one after the
other in fresh processes and pastes the tables into ``docs/performance.md``
between ``<!-- BEGIN <name> -->`` / ``<!-- END <name> -->`` markers.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"


def time_call(fn, *, warmup=1, repeats=3, min_time=0.0):
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``fn`` must block until its result is ready (e.g. call ``.numpy()``).
    With ``min_time > 0``, repeats continue until that many seconds have passed.
    Returns ``(median_seconds, all_times)``.
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def peak_rss_bytes():
    """Peak resident memory of this process (``VmHWM``, which :func:`reset_peak_rss`
    resets; ``getrusage``'s ``ru_maxrss`` where /proc is missing, never reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0:
    ``/proc/self/clear_refs``), so that :func:`peak_rss_bytes` then gives the peak
    of what follows. Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes():
    """Resident memory of this process now (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def machine():
    """A short description of the machine and software (for the report)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except OSError:
        pass
    import keras

    info["keras"] = keras.__version__
    info["backend"] = keras.backend.backend()
    if info["backend"] == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.name for d in tf.config.list_logical_devices()]
    elif info["backend"] == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
    return info


def machine_line(info):
    """One line from :func:`machine`'s dict, e.g. for a table's caption."""
    parts = [f"{info.get('cpu') or 'unknown CPU'} ({info.get('cores')} cores)"]
    if "memory_gib" in info:
        parts.append(f"{info['memory_gib']} GiB RAM")
    accelerators = [d for d in info.get("devices", []) if "CPU" not in str(d).upper()]
    if accelerators:
        parts.append(", ".join(str(d) for d in accelerators))
    parts.append(f"Python {info.get('python')}")
    for key, label in (("tensorflow", "TensorFlow"), ("jax", "JAX"), ("keras", "Keras")):
        if key in info:
            parts.append(f"{label} {info[key]}")
    if "backend" in info:
        parts.append(f"backend {info['backend']}")
    return "; ".join(parts)


def write_json_atomic(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_results(name, results, *, command, results_dir=RESULTS_DIR):
    """Write ``{"name", "command", "machine", "results"}`` to ``<results_dir>/<name>.json``."""
    data = {"name": name, "command": command, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    write_json_atomic(Path(results_dir) / f"{name}.json", data)
    return data


def markdown_table(header, rows):
    """A GitHub markdown table; ``rows`` are sequences of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text, name, body):
    """Replace what lies between the ``name`` markers of ``text`` (append them if absent)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip() + "\n\n" + block + "\n"
