"""Smoke tests of the benchmarks: they run, write complete results and render the
docs. No timing is asserted; the sizes are tiny."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

# benchmarks/ is not an installed package: importable from the checkout (bare `pytest` too)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import loss_kernels  # noqa: E402
from benchmarks import run as bench_run  # noqa: E402
from benchmarks.common import ROOT  # noqa: E402
from keras_supcon.losses import supcon_loss  # noqa: E402

# The quick run's `mixed` precision computes in bfloat16 (tests/conftest.py on --isa avx2).
BF16 = pytest.mark.bfloat16

DOC = """# Perf

Intro to keep.

<!-- BEGIN loss_kernels -->
stale table
<!-- END loss_kernels -->

Tail to keep.
"""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m benchmarks.run --only loss_kernels --quick`` into a tmp dir, once."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    doc = tmp / "perf.md"
    doc.write_text(DOC)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "loss_kernels", "--quick",
         "--results-dir", str(tmp / "results"), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp / "results" / "loss_kernels.json").read_text())
    return data, doc


@BF16
def test_quick_results_cover_every_configuration(quick_run):
    data, _ = quick_run
    assert data["name"] == "loss_kernels" and "--quick" in data["command"]
    assert data["machine"]["cores"] >= 1
    r = data["results"]
    assert r["complete"] and r["quick"]
    assert r["kernels"] == list(loss_kernels.KERNELS)
    assert r["modes"] == list(loss_kernels.MODES)
    assert r["precisions"] == list(loss_kernels.PRECISIONS)
    # `mixed` computes in the benchmark's policy for this machine: bfloat16 on a CPU,
    # float16 on a GPU (loss_kernels.mixed_policy_name)
    assert r["dtypes"] == {"float32": "float32", "mixed": loss_kernels.precision_dtype("mixed")}
    assert r["dtypes"]["mixed"] in ("bfloat16", "float16")
    by_key = {(t["batch_size"], t["dim"], t["precision"], t["kernel"], t["mode"]): t
              for t in r["timings"]}
    expected = {(b, d, p, k, m) for b in r["batch_sizes"] for d in r["dims"]
                for p in r["precisions"] for k in r["kernels"] for m in r["modes"]}
    assert set(by_key) == expected and len(r["timings"]) == len(expected)
    for (b, d, p, k, m), t in by_key.items():
        assert "error" not in t and "skipped" not in t, t
        assert t["seconds"] > 0 and len(t["times"]) >= r["repeats"]
        assert t["n"] == 2 * b and t["dtype"] == r["dtypes"][p]
        assert np.isfinite(t["loss"])
        floor = min(by_key[(b, d, p, "floor", mode)]["seconds"] for mode in r["modes"])
        assert t["ratio"] == pytest.approx(t["seconds"] / floor)
        same_mode = by_key[(b, d, p, "floor", m)]["seconds"]
        assert t["mode_ratio"] == pytest.approx(t["seconds"] / same_mode)
        assert t["mode_floor_extrapolated"] is False
    for b in r["batch_sizes"]:
        for p in r["precisions"]:
            floors = [by_key[(b, r["dims"][0], p, "floor", m)]["ratio"] for m in r["modes"]]
            assert min(floors) == pytest.approx(1.0)


@BF16
def test_quick_memory_probe(quick_run):
    data, _ = quick_run
    (probe,) = data["results"]["memory"]
    assert "error" not in probe, probe
    assert (probe["kernel"], probe["mode"], probe["batch_size"]) == ("supcon", "graph", 64)
    assert probe["nxn_bytes"] == (2 * 64) ** 2 * 4
    assert probe["peak_rss_bytes"] >= probe["rss_before_bytes"] > 0
    assert probe["nxn_buffers"] == pytest.approx(probe["bytes"] / probe["nxn_bytes"])
    # the probe process asks for the allocator that keeps statistics (TF_CPU_ALLOCATOR_USE_BFC)
    assert probe["measure"] == "allocator" and probe["allocator_stats"] == "kept", probe
    assert probe["bytes"] == probe["allocator_peak_bytes"] > 0


def test_memory_probe_without_allocator_statistics(monkeypatch):
    """Where TensorFlow's CPU allocator keeps no statistics (not the BFC allocator:
    machines without oneDNN by default), the probe measures RSS and says so."""
    def no_stats(device):
        raise ValueError(f"Cannot reset memory stats for device '{device}'")

    monkeypatch.setattr(tf.config.experimental, "reset_memory_stats", no_stats)
    probe = loss_kernels.memory_probe("supcon", "graph", 16, 8)
    assert probe["measure"] == "rss" and "allocator_peak_bytes" not in probe
    assert probe["allocator_stats"].startswith("not kept (Cannot reset memory stats")
    assert probe["bytes"] == probe["extra_bytes"] >= 0
    assert probe["nxn_buffers"] == pytest.approx(probe["bytes"] / probe["nxn_bytes"])
    data = {"machine": {"cpu": "test cpu", "cores": 2}, "results": {
        "batch_sizes": [], "dims": [], "precisions": [], "kernels": ["supcon", "floor"],
        "modes": ["graph"], "timings": [], "backend": "tensorflow", "num_classes": 10,
        "mixed_policy": "mixed_bfloat16", "complete": True,
        "memory": [probe, {**probe, "kernel": "floor", "measure": "allocator"}]}}
    text = loss_kernels.markdown(data)
    assert "peak RSS during a second call minus RSS before it" in text
    # two measures in one table: each cell says which it is
    assert "[rss]" in text and "[allocator]" in text


@BF16
def test_run_replaces_only_its_sections(quick_run):
    data, doc = quick_run
    text = doc.read_text()
    assert text.startswith("# Perf\n\nIntro to keep.\n")
    assert "Tail to keep." in text and "stale table" not in text
    for name in ("loss_kernels", "machine"):
        assert text.count(f"<!-- BEGIN {name} -->") == 1
        assert text.count(f"<!-- END {name} -->") == 1
    section = text.split("<!-- BEGIN loss_kernels -->")[1].split("<!-- END loss_kernels -->")[0]
    assert section.strip() == loss_kernels.markdown(data).strip()
    assert text.index("<!-- END loss_kernels -->") < text.index("Tail to keep.")


@BF16
def test_markdown_renders_times_memory_and_gaps(quick_run):
    data, _ = quick_run
    text = loss_kernels.markdown(data)
    header = next(line for line in text.splitlines() if line.startswith("| B |"))
    for k in loss_kernels.KERNELS:
        for m in loss_kernels.MODES:
            assert f"| {k} {m} " in header + " "
    assert "(1.00x)" in text and "N x N float32" in text and "| supcon |" in text
    assert data["machine"]["cpu"] in text
    # skipped / failed configurations and a failed probe still render
    data = json.loads(json.dumps(data))
    r = data["results"]
    r["timings"][-1].update(seconds=None, ratio=None, skipped="too slow")
    r["timings"][-2].update(seconds=None, ratio=None, error="boom")
    r["memory"].append({"kernel": "naive", "mode": "xla", "batch_size": 64, "dim": 8,
                        "nxn_bytes": 65536, "error": "killed (out of memory?)"})
    r["complete"] = False
    text = loss_kernels.markdown(data)
    assert "skipped" in text and "failed" in text and "partial" in text
    assert "failed: killed (out of memory?)" in text


@BF16
def test_run_reports_a_failing_benchmark_and_keeps_the_others(quick_run, tmp_path,
                                                              monkeypatch, capsys):
    data, _ = quick_run

    def fake_run(name, *, quick, results_dir):
        if name == "train_step":
            raise RuntimeError("exited with status 3")
        return data

    monkeypatch.setattr(bench_run, "run_benchmark", fake_run)
    doc = tmp_path / "new" / "performance.md"
    rc = bench_run.main(["--only", "train_step,loss_kernels", "--doc", str(doc)])
    assert rc == 1
    assert "train_step (RuntimeError: exited with status 3)" in capsys.readouterr().err
    text = doc.read_text()
    assert text.startswith("# Performance")
    assert "<!-- BEGIN loss_kernels -->" in text and "<!-- BEGIN machine -->" in text
    assert "BEGIN train_step" not in text
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--only", "nonsense"])


def test_ratios_against_the_floor_extrapolate_where_it_did_not_fit():
    def row(kernel, mode, b, seconds):
        return {"kernel": kernel, "mode": mode, "batch_size": b, "dim": 128,
                "precision": "float32", "seconds": seconds}

    timings = loss_kernels.add_ratios([
        row("floor", "graph", 100, 1.0), row("floor", "xla", 100, 2.0),
        row("floor", "graph", 200, 4.4), row("supcon", "xla", 100, 3.0),
        row("supcon", "graph", 400, 20.0), row("supcon", "xla", 400, 40.0),
        row("supcon", "graph", 50, 1.0), {**row("floor", "graph", 400, None), "skipped": "RAM"}])
    by = {(t["kernel"], t["mode"], t["batch_size"]): t for t in timings}
    assert by[("supcon", "xla", 100)]["ratio"] == pytest.approx(3.0)  # the faster floor
    assert by[("supcon", "xla", 100)]["mode_ratio"] == pytest.approx(1.5)  # xla's own
    # graph floor measured up to B = 200 (4.4 s): B = 400 is 4x that, 17.6 s
    big = by[("supcon", "graph", 400)]
    assert big["ratio"] is None and big["mode_floor_extrapolated"] is True
    assert big["mode_ratio"] == pytest.approx(20.0 / 17.6)
    assert by[("supcon", "xla", 400)]["mode_ratio"] == pytest.approx(40.0 / 32.0)
    # below the smallest floor nothing is extrapolated
    assert by[("supcon", "graph", 50)]["mode_ratio"] is None
    assert "~1.14x" in loss_kernels._cell(big)


def test_predicted_slow_configurations_are_skipped(tmp_path):
    rc = loss_kernels.main([
        "--batch-sizes", "8,16", "--dims", "4", "--kernels", "floor,supcon",
        "--modes", "graph", "--precisions", "float32", "--repeats", "1",
        "--min-time", "0", "--max-call-seconds", "0", "--memory-batch-size", "0",
        "--results-dir", str(tmp_path)])
    assert rc == 0
    timings = json.loads((tmp_path / "loss_kernels.json").read_text())["results"]["timings"]
    assert [t["batch_size"] for t in timings if t["seconds"]] == [8, 8]
    assert all("max-call-seconds" in t["skipped"] for t in timings if t["batch_size"] == 16)


def _inputs(seed=0, batch=12, dim=5, classes=3):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch, 2, dim)).astype("float32")
    labels = rng.integers(0, classes, size=batch).astype("int32")
    return features, labels


def test_naive_baseline_is_supcon():
    """The benchmark's SupContrast port computes supcon_loss: value and gradient."""
    features, labels = _inputs()
    x = tf.constant(features)
    losses, grads = [], []
    for fn in (loss_kernels.naive_supcon_tf, supcon_loss):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = fn(x, tf.constant(labels))
        losses.append(float(loss))
        grads.append(tape.gradient(loss, x).numpy())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_naive_jax_port_matches_tensorflow():
    jnp = pytest.importorskip("jax.numpy")
    features, labels = _inputs(seed=1)
    expected = float(loss_kernels.naive_supcon_tf(tf.constant(features), tf.constant(labels)))
    got = float(loss_kernels.naive_supcon_jax(jnp.asarray(features), jnp.asarray(labels)))
    assert got == pytest.approx(expected, rel=1e-5)
