"""Measurements and tables of the compression report.

Every size is measured from the files written on disk; the compressed size is
that of a ZIP_DEFLATED archive of the file or folder, as the tfmot pruning
guide measures it (gzip's deflate).
"""

import csv
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from keras_supcon.evaluation.tables import markdown_table
from keras_supcon.runs.rundir import RunDir


def disk_bytes(path):
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def zipped_bytes(path):
    """Bytes of a ZIP_DEFLATED archive holding the file or folder ``path``."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.name if f == path else f.relative_to(path))
        return archive.stat().st_size


def latency_ms(fn, *, repeats=30, warmup=5):
    """Median milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def human_bytes(n):
    """``n`` bytes in the largest unit that keeps the shown value below 1024."""
    for unit in ("B", "KB", "MB", "GB"):
        if round(n, 1) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _summary_rows(report):
    """The summary table of :func:`format_report`: baseline against pruned."""
    b, p = report["baseline"], report["pruned"]
    return [
        ("SavedModel size", human_bytes(b["saved_model_bytes"]),
         human_bytes(p["saved_model_bytes"]),
         f"{b['saved_model_bytes'] / p['saved_model_bytes']:.2f}x"),
        ("SavedModel zipped (deflate)", human_bytes(b["saved_model_zipped_bytes"]),
         human_bytes(p["saved_model_zipped_bytes"]),
         f"{report['compression_ratio_zipped']:.2f}x"),
        ("prunable kernels sparsity", f"{b['sparsity']['total']['sparsity']:.3f}",
         f"{p['sparsity']['total']['sparsity']:.3f}", ""),
        ("test accuracy", f"{b['accuracy']:.4f}", f"{p['accuracy']:.4f}",
         f"{p['accuracy'] - b['accuracy']:+.4f}"),
        ("test macro F1", f"{b['f1_macro']:.4f}", f"{p['f1_macro']:.4f}",
         f"{p['f1_macro'] - b['f1_macro']:+.4f}"),
        ("CPU latency, 1 image (ms)", f"{b['latency_ms_batch1']:.2f}",
         f"{p['latency_ms_batch1']:.2f}", ""),
        ("CPU time per image, batch 64 (ms)", f"{b['ms_per_image_batch64']:.3f}",
         f"{p['ms_per_image_batch64']:.3f}", ""),
    ]


def format_report(report):
    """``compression.md`` of one pruning job (the dict written to ``compression.json``)."""
    b, p = report["baseline"], report["pruned"]
    out = [f"# Compression report: {report['method']} pruning to "
           f"{report['target_sparsity']:.0%}\n",
           f"Run: `{report['run_dir']}` ({report['backbone']}, {report['dataset']}). "
           f"Settings: {', '.join(f'{k}={v}' for k, v in report['settings'].items())}.\n",
           "## Summary\n"]
    rows = _summary_rows(report)
    out.append(markdown_table(["", "baseline", "pruned", "change / ratio"], rows))
    if report.get("tflite"):
        out.append("## TFLite quantisation of the pruned model\n")
        # (reports written before the TFLite latency was measured have none)
        rows = [(mode, human_bytes(t["bytes"]), human_bytes(t["zipped_bytes"]),
                 f"{b['saved_model_zipped_bytes'] / t['zipped_bytes']:.2f}x",
                 f"{t['accuracy']:.4f}",
                 f"{t['latency_ms_batch1']:.2f}" if "latency_ms_batch1" in t else "")
                for mode, t in report["tflite"].items()]
        out.append(markdown_table(["quantisation", "size", "zipped", "zipped ratio vs baseline "
                                   "SavedModel zipped", "test accuracy",
                                   "CPU latency, 1 image (ms)"], rows))
    if report.get("compared_with"):
        out.append(f"## Compared at the same sparsity ({report['target_sparsity']:.0%})\n")
        rows = [(f"**{report['method']}** (this report)",
                 f"{p['sparsity']['total']['sparsity']:.3f}", f"{p['accuracy']:.4f}",
                 f"{p['f1_macro']:.4f}")]
        rows += [(name, f"{c['sparsity']:.3f}", f"{c['accuracy']:.4f}", f"{c['f1_macro']:.4f}")
                 for name, c in report["compared_with"].items()]
        out.append(markdown_table(["model", "sparsity", "test accuracy", "test macro F1"], rows))
    if report.get("sensitivity"):
        sens = report["sensitivity"]
        out.append(f"Layer sensitivity measured on the validation split (accuracy "
                   f"{sens['val_accuracy']:.4f}); predicted drop of the allocation "
                   f"{sens['predicted_drop']:.4f}, of uniform pruning "
                   f"{sens['predicted_drop_uniform']:.4f}.\n")
        rows = [(f"`{n}`", *(f"{d:+.4f}" for d in drops)) for n, drops in sens["drops"].items()]
        out.append(markdown_table(["layer", *(f"drop at {r:.0%}" for r in sens["rates"])], rows))
    if report.get("left_dense"):
        out.append("Left dense: " + "; ".join(f"`{k}` ({v})"
                                               for k, v in report["left_dense"].items()) + "\n")
    out.append("## Per layer (kernels)\n")
    targets = report.get("layer_sparsity", {})
    rows = [(f"`{name}`", r["params"], r["nonzero"], f"{targets.get(name, 0):.3f}",
             f"{r['sparsity']:.3f}") for name, r in p["sparsity"]["layers"].items()]
    t = p["sparsity"]["total"]
    rows.append(("**total**", t["params"], t["nonzero"], "", f"**{t['sparsity']:.3f}**"))
    out.append(markdown_table(["layer", "parameters", "non-zero", "target", "sparsity"], rows))
    m = p["sparsity"]["model"]
    out.append(f"Whole model: {m['params']} parameters, {m['nonzero']} non-zero "
               f"(sparsity {m['sparsity']:.3f}).\n")
    return "\n".join(out)


SWEEP_COLUMNS = ["target_sparsity", "achieved_sparsity", "saved_model_bytes",
                 "zipped_bytes", "compression_ratio_zipped", "accuracy", "f1_macro"]


def sweep_rows(baseline, reports):
    """The pruning table: the dense baseline, then one row per job."""
    rows = [{"target_sparsity": "dense", "achieved_sparsity":
             baseline["sparsity"]["total"]["sparsity"],
             "saved_model_bytes": baseline["saved_model_bytes"],
             "zipped_bytes": baseline["saved_model_zipped_bytes"],
             "compression_ratio_zipped": 1.0, "accuracy": baseline["accuracy"],
             "f1_macro": baseline["f1_macro"]}]
    for r in reports:
        p = r["pruned"]
        rows.append({"target_sparsity": r["target_sparsity"],
                     "achieved_sparsity": p["sparsity"]["total"]["sparsity"],
                     "saved_model_bytes": p["saved_model_bytes"],
                     "zipped_bytes": p["saved_model_zipped_bytes"],
                     "compression_ratio_zipped": r["compression_ratio_zipped"],
                     "accuracy": p["accuracy"], "f1_macro": p["f1_macro"]})
    return rows


def write_sweep(out, method, rows):
    """``sweep.csv``, ``sweep.md`` and ``sweep.png`` in ``out``."""
    from keras_supcon.evaluation.figures import plot_sweep

    out = RunDir(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.write_text("sweep.csv", buf.getvalue())
    table = markdown_table(
        ["pruning rate", "achieved sparsity", "model size (bytes)", "zipped size (bytes)",
         "compression ratio (zipped)", "test accuracy", "test macro F1"],
        [(r["target_sparsity"] if r["target_sparsity"] == "dense" else
          f"{r['target_sparsity']:.0%}", f"{r['achieved_sparsity']:.3f}",
          r["saved_model_bytes"], r["zipped_bytes"], f"{r['compression_ratio_zipped']:.2f}x",
          f"{r['accuracy']:.4f}", f"{r['f1_macro']:.4f}") for r in rows])
    out.write_text("sweep.md", f"# Pruning sweep ({method})\n\n{table}")
    out.save_figure(plot_sweep(rows, f"{method} pruning sweep"), "sweep.png")
    return table
