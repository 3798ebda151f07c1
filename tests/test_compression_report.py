"""keras_supcon.compression.report on small hand-made inputs: sizes on disk, the deflate
archive's size, the latency's median (on a fake clock), byte units, and the exact text of
``compression.md``."""

import types
import zipfile

import numpy as np
import pytest
from tolerances import F64

from keras_supcon.compression import report as report_module
from keras_supcon.compression.report import (
    disk_bytes,
    format_report,
    human_bytes,
    latency_ms,
    zipped_bytes,
)

# ----------------------------------------------------------------------- sizes on disk


@pytest.fixture
def tree(tmp_path):
    """A folder with files at two depths (and an empty sub-folder, which weighs nothing)."""
    root = tmp_path / "model"
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "saved_model.pb").write_bytes(b"\0" * 5000)
    (root / "variables" / "variables.data").write_bytes(bytes(range(256)) * 10)
    (root / "variables" / "variables.index").write_bytes(b"abc")
    return root


def test_disk_bytes_of_a_file_and_of_a_folder(tree):
    assert disk_bytes(tree / "saved_model.pb") == 5000
    assert disk_bytes(str(tree / "variables" / "variables.index")) == 3
    assert disk_bytes(tree) == 5000 + 2560 + 3
    assert disk_bytes(tree / "assets") == 0


def _reference_zip(entries, path):
    """An archive written here, with the arcnames of the tfmot guide's measurement."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file, name in entries:
            zf.write(file, name)
    return path.stat().st_size


def test_zipped_bytes_is_the_size_of_a_deflate_archive(tree, tmp_path):
    pb = tree / "saved_model.pb"
    assert zipped_bytes(pb) == _reference_zip([(pb, "saved_model.pb")], tmp_path / "a.zip")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    assert zipped_bytes(tree) == _reference_zip(
        [(f, f.relative_to(tree)) for f in files], tmp_path / "b.zip")
    # deflate at work: 5000 zero bytes compress to far less than themselves ...
    assert zipped_bytes(pb) < 5000 / 10
    # ... random bytes do not (the archive adds its headers)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    assert zipped_bytes(noise) > 5000


# ----------------------------------------------------------------------------- latency


def _fake_clock(monkeypatch, durations):
    """``report.time.perf_counter`` reads a clock that only ``fn`` moves, by the next of
    ``durations`` (seconds) at each call."""
    clock = {"now": 100.0, "calls": 0}

    def fn():
        clock["now"] += durations[clock["calls"]]
        clock["calls"] += 1

    monkeypatch.setattr(report_module, "time",
                        types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    return fn, clock


def test_latency_is_the_median_of_the_timed_calls_in_milliseconds(monkeypatch):
    # two warm-up calls that take 50 s each are not timed
    fn, clock = _fake_clock(monkeypatch, [50.0, 50.0, 0.004, 0.001, 0.009])
    np.testing.assert_allclose(latency_ms(fn, repeats=3, warmup=2), 4.0, **F64)
    assert clock["calls"] == 5


def test_latency_median_of_an_even_number_of_calls(monkeypatch):
    fn, clock = _fake_clock(monkeypatch, [0.004, 0.001, 0.003, 0.002])
    np.testing.assert_allclose(latency_ms(fn, repeats=4, warmup=0), 2.5, **F64)
    assert clock["calls"] == 4


def test_latency_default_counts(monkeypatch):
    fn, clock = _fake_clock(monkeypatch, [1.0] * 5 + [0.002] * 30)
    np.testing.assert_allclose(latency_ms(fn), 2.0, **F64)
    assert clock["calls"] == 35


# ------------------------------------------------------------------------------- units


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"),
    (1024, "1.0 KB"), (1536, "1.5 KB"), (10 * 1024 + 51, "10.0 KB"), (10 * 1024 + 52, "10.1 KB"),
    (1024 ** 2, "1.0 MB"), (int(2.25 * 1024 ** 2), "2.2 MB"),  # 2.25 rounds half to even
    (3 * 1024 ** 3, "3.0 GB"), (1024 ** 4, "1024.0 GB"),  # GB is the largest unit
    (1024 ** 2 - 41, "1.0 MB"),  # 1023.96 KB would show as "1024.0 KB": the next unit
])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


# ------------------------------------------------------------------------------ report


def _report():
    return {
        "method": "magnitude", "target_sparsity": 0.5, "run_dir": "runs/digits_ce",
        "backbone": "small_resnet", "dataset": "digits",
        "settings": {"epochs": 2, "schedule": "constant"},
        "compression_ratio_zipped": 4.0,
        "baseline": {
            "saved_model_bytes": 3 * 1024 ** 2, "saved_model_zipped_bytes": 2 * 1024 ** 2,
            "accuracy": 0.9, "f1_macro": 0.8912, "latency_ms_batch1": 1.234,
            "ms_per_image_batch64": 0.0456, "sparsity": {"total": {"sparsity": 0.0}},
        },
        "pruned": {
            "saved_model_bytes": 1024 ** 2, "saved_model_zipped_bytes": 512 * 1024,
            "accuracy": 0.875, "f1_macro": 0.9, "latency_ms_batch1": 1.0,
            "ms_per_image_batch64": 0.04,
            "sparsity": {
                "layers": {"conv1": {"params": 100, "nonzero": 50, "sparsity": 0.5},
                           "dense": {"params": 300, "nonzero": 100, "sparsity": 2 / 3}},
                "total": {"params": 400, "nonzero": 150, "sparsity": 0.625},
                "model": {"params": 450, "nonzero": 200, "sparsity": 5 / 9},
            },
        },
        "layer_sparsity": {"dense": 0.7},  # conv1 has no target: 0
    }


EXPECTED = """\
# Compression report: magnitude pruning to 50%

Run: `runs/digits_ce` (small_resnet, digits). Settings: epochs=2, schedule=constant.

## Summary

|  | baseline | pruned | change / ratio |
|---|---|---|---|
| SavedModel size | 3.0 MB | 1.0 MB | 3.00x |
| SavedModel zipped (deflate) | 2.0 MB | 512.0 KB | 4.00x |
| prunable kernels sparsity | 0.000 | 0.625 |  |
| test accuracy | 0.9000 | 0.8750 | -0.0250 |
| test macro F1 | 0.8912 | 0.9000 | +0.0088 |
| CPU latency, 1 image (ms) | 1.23 | 1.00 |  |
| CPU time per image, batch 64 (ms) | 0.046 | 0.040 |  |

## Per layer (kernels)

| layer | parameters | non-zero | target | sparsity |
|---|---|---|---|---|
| `conv1` | 100 | 50 | 0.000 | 0.500 |
| `dense` | 300 | 100 | 0.700 | 0.667 |
| **total** | 400 | 150 |  | **0.625** |

Whole model: 450 parameters, 200 non-zero (sparsity 0.556).
"""


def test_report_text_without_the_optional_sections():
    assert format_report(_report()) == EXPECTED


def test_empty_optional_sections_are_left_out():
    r = _report()
    r.update(tflite={}, compared_with={}, sensitivity=None, left_dense={})
    assert format_report(r) == EXPECTED


def test_summary_ratios_and_changes_are_computed_from_the_numbers():
    r = _report()
    r["baseline"]["saved_model_bytes"] = 1000
    r["pruned"]["saved_model_bytes"] = 300  # 3.333...x
    r["compression_ratio_zipped"] = 1.005  # the report's own ratio, as given, 2 decimals
    r["pruned"]["accuracy"] = 0.95
    lines = format_report(r).splitlines()
    assert "| SavedModel size | 1000 B | 300 B | 3.33x |" in lines
    assert any(line.startswith("| SavedModel zipped (deflate) |")
               and line.endswith(f"| {1.005:.2f}x |") for line in lines)
    assert "| test accuracy | 0.9000 | 0.9500 | +0.0500 |" in lines


def test_tflite_section():
    r = _report()
    # (int8: a report written before the TFLite latency was measured)
    r["tflite"] = {"dynamic": {"bytes": 256 * 1024, "zipped_bytes": 128 * 1024,
                               "accuracy": 0.87, "latency_ms_batch1": 0.456},
                   "int8": {"bytes": 100, "zipped_bytes": 1000, "accuracy": 0.8}}
    text = format_report(r)
    assert text.startswith(EXPECTED.split("## Per layer")[0])
    section = ("## TFLite quantisation of the pruned model\n\n"
               "| quantisation | size | zipped | zipped ratio vs baseline SavedModel zipped "
               "| test accuracy | CPU latency, 1 image (ms) |\n"
               "|---|---|---|---|---|---|\n"
               "| dynamic | 256.0 KB | 128.0 KB | 16.00x | 0.8700 | 0.46 |\n"  # 2 MB / 128 KB
               "| int8 | 100 B | 1000 B | 2097.15x | 0.8000 |  |\n"  # 2097152 / 1000
               "\n## Per layer (kernels)\n")
    assert section in text


def test_comparison_sensitivity_and_left_dense_sections():
    r = _report()
    r["compared_with"] = {"magnitude (uniform, tfmot)":
                          {"sparsity": 0.5, "accuracy": 0.85, "f1_macro": 0.84}}
    r["sensitivity"] = {"val_accuracy": 0.95, "predicted_drop": 0.0123,
                        "predicted_drop_uniform": 0.05, "rates": [0.3, 0.6],
                        "drops": {"conv1": [0.01, 0.1], "dense": [-0.002, 0.03]}}
    r["left_dense"] = {"stem": "first convolution", "head": "classifier"}
    text = format_report(r)
    expected = """\
## Compared at the same sparsity (50%)

| model | sparsity | test accuracy | test macro F1 |
|---|---|---|---|
| **magnitude** (this report) | 0.625 | 0.8750 | 0.9000 |
| magnitude (uniform, tfmot) | 0.500 | 0.8500 | 0.8400 |

Layer sensitivity measured on the validation split (accuracy 0.9500); predicted drop of the \
allocation 0.0123, of uniform pruning 0.0500.

| layer | drop at 30% | drop at 60% |
|---|---|---|
| `conv1` | +0.0100 | +0.1000 |
| `dense` | -0.0020 | +0.0300 |

Left dense: `stem` (first convolution); `head` (classifier)

## Per layer (kernels)
"""
    assert expected in text
    # the sections come between the summary and the per-layer table, in this order
    assert text.startswith(EXPECTED.split("## Per layer")[0])
    assert text.endswith(EXPECTED.split("## Per layer (kernels)\n")[1])


@pytest.mark.parametrize("section", ["baseline", "pruned", "method", "settings"])
def test_a_report_missing_a_required_entry_is_an_error(section):
    r = _report()
    del r[section]
    with pytest.raises(KeyError, match=section):
        format_report(r)


def test_a_pruned_model_of_zero_bytes_is_an_error():
    r = _report()
    r["pruned"]["saved_model_bytes"] = 0
    with pytest.raises(ZeroDivisionError):
        format_report(r)
