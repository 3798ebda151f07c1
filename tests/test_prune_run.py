"""The pruning job end to end on a small classifier trained on digits:
reports against files measured here, exports loaded back, sweep, lottery, sensitivity, CLI."""

import csv
import hashlib
import json
import os
import re
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import batchnorm_momenta, python_json

from keras_supcon.cli.prune import main
from keras_supcon.compression.prune import kernels, prunable_layers
from keras_supcon.compression.run import prune_run
from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.training import train

QUICK_PRUNE = dict(epochs=1, verbose=0)
SIZE = 8  # digits are 8x8 images: the classifier sees them as they are, at the least cost


def _tree_digest(root, skip="pruning"):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != skip]
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _size_on_disk(path):
    if os.path.isfile(path):
        return os.stat(path).st_size
    return sum(os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)


def _zipped(path, tmp_path):
    archive = tmp_path / "check.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        if os.path.isfile(path):
            zf.write(path, os.path.basename(path))
        else:
            for d, _, fs in sorted(os.walk(path)):
                for f in sorted(fs):
                    zf.write(os.path.join(d, f), os.path.relpath(os.path.join(d, f), path))
    return os.stat(archive).st_size


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("runs") / "digits_ce"
    train(dataset="digits", loss="ce", backbone="small_resnet", image_size=SIZE,
          epochs=2, batch_size=64, precise_bn_batches=4, out=str(out), verbose=0)
    return out


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    """One output folder for the lottery and sensitivity jobs: both at 50%, they share
    the uniform tfmot job they are compared with (run by the first, reused by the other)."""
    return tmp_path_factory.mktemp("comparisons")


@pytest.fixture(scope="module")
def sweep(trained_run):
    """The sweep (0% and 50%) as a user's fresh process runs it: tfmot's import sets
    TF_USE_LEGACY_KERAS=1 and turns tf.keras into Keras 2 for the whole process; the
    child reports both after the prune (``environment``), and the result as JSON."""
    before = _tree_digest(trained_run)
    child = textwrap.dedent(f"""
        import json, os
        from keras_supcon.compression.run import prune_run
        result = prune_run(run_dir={str(trained_run)!r}, sparsity=(0.0, 0.5),
                           **{QUICK_PRUNE!r})
        import tensorflow as tf
        print(json.dumps({{"environment": {{"legacy": os.environ.get("TF_USE_LEGACY_KERAS"),
                                           "tf_keras": tf.keras.__version__}},
                          "result": result}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    reply = python_json(child, env, timeout=900)
    return trained_run, reply["result"], before, reply["environment"]


def test_pruning_never_touches_the_run(sweep):
    run, _, before, _ = sweep
    assert _tree_digest(run) == before
    assert sorted(p.name for p in (run / "pruning").iterdir()) == [
        "magnitude-s0.00", "magnitude-s0.50", "sweep.csv", "sweep.md", "sweep.png"]
    # the pruned classifier keeps the run's BatchNorm momentum (tf_keras twin and back)
    pruned = keras.models.load_model(run / "pruning" / "magnitude-s0.50" /
                                     "pruned_classifier.keras")
    assert batchnorm_momenta(pruned) == {0.9}


def test_exported_kernels_are_at_least_half_zero(sweep):
    run, result, _, _ = sweep
    job = run / "pruning" / "magnitude-s0.50"
    model = keras.models.load_model(job / "pruned_classifier.keras")
    names = prunable_layers(model)
    values = [keras.ops.convert_to_numpy(v) for v in kernels(model, names).values()]
    zero_fraction = sum((v == 0).sum() for v in values) / sum(v.size for v in values)
    assert zero_fraction >= 0.5
    report = result["reports"][1]
    assert report["pruned"]["sparsity"]["total"]["sparsity"] == pytest.approx(zero_fraction)
    # The same zeros are in the SavedModel's variables.
    loaded = tf.saved_model.load(str(job / "pruned_saved_model"))
    saved_zeros = sum(int((v.numpy() == 0).sum()) for v in loaded.variables
                      if len(v.shape) in (2, 4))
    assert saved_zeros >= sum((v == 0).sum() for v in values)
    assert "accuracy_change" in report and "f1_change" in report


def test_report_sizes_are_those_of_the_files(sweep, tmp_path):
    run, result, _, _ = sweep
    for report in result["reports"]:
        job = run / "pruning" / f"magnitude-s{report['target_sparsity']:.2f}"
        on_disk = json.loads((job / "compression.json").read_text())
        assert on_disk["pruned"]["saved_model_bytes"] == report["pruned"]["saved_model_bytes"]
        for side, path in (("baseline", run / "saved_model"),
                           ("pruned", job / "pruned_saved_model")):
            assert report[side]["saved_model_bytes"] == _size_on_disk(path)
            assert report[side]["saved_model_zipped_bytes"] == _zipped(path, tmp_path)
        assert report["compression_ratio_zipped"] == pytest.approx(
            _zipped(run / "saved_model", tmp_path) / _zipped(job / "pruned_saved_model", tmp_path))
        for mode, t in report["tflite"].items():
            assert t["bytes"] == _size_on_disk(job / t["file"])
            assert t["zipped_bytes"] == _zipped(job / t["file"], tmp_path)
            # Quantised, the classifier keeps its accuracy (equal to the pruned model's, 0.97,
            # in both modes at both sparsities when measured; chance is 0.1): 0.03 is 11 of the
            # 360 test images.
            assert abs(t["accuracy"] - report["pruned"]["accuracy"]) <= 0.03, (mode, t)
            assert t["accuracy"] > 0.5, (mode, t)
            assert t["latency_ms_batch1"] > 0, (mode, t)  # LiteRT, one image
        md = (job / "compression.md").read_text()
        assert "## Per layer (kernels)" in md and "stage3_conv2" in md
    dense, half = result["reports"]
    assert half["pruned"]["saved_model_zipped_bytes"] < dense["pruned"]["saved_model_zipped_bytes"]


def test_pruned_saved_model_loads_both_ways_and_matches_the_stripped_model(sweep):
    run, _, _, _ = sweep
    job = run / "pruning" / "magnitude-s0.50"
    model = keras.models.load_model(job / "pruned_classifier.keras")
    images = next(iter(supervised_batches(load_dataset("digits").test, SIZE, 32)))[0]
    expected = np.asarray(model(images))
    sig = tf.saved_model.load(str(job / "pruned_saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(sig(images=images)["probabilities"].numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    layer = keras.layers.TFSMLayer(str(job / "pruned_saved_model"),
                                   call_endpoint="serving_default")
    np.testing.assert_allclose(np.asarray(layer(images)["probabilities"]), expected,
                               rtol=1e-5, atol=1e-6)


def test_sweep_table_is_the_reports(sweep):
    run, result, _, _ = sweep
    rows = list(csv.DictReader((run / "pruning" / "sweep.csv").open()))
    assert [r["target_sparsity"] for r in rows] == ["dense", "0.0", "0.5"]
    assert float(rows[0]["accuracy"]) == result["baseline"]["accuracy"]
    for row, report in zip(rows[1:], result["reports"]):
        assert float(row["accuracy"]) == report["pruned"]["accuracy"]
        assert int(row["zipped_bytes"]) == report["pruned"]["saved_model_zipped_bytes"]
        assert float(row["achieved_sparsity"]) == report["pruned"]["sparsity"]["total"][
            "sparsity"]
    md = (run / "pruning" / "sweep.md").read_text()
    assert "| pruning rate |" in md and "| 50% |" in md
    assert (run / "pruning" / "sweep.png").stat().st_size > 10_000


def test_repeating_the_command_reuses_finished_jobs(sweep):
    run, result, _, _ = sweep
    report_file = run / "pruning" / "magnitude-s0.50" / "compression.json"
    stamp = report_file.stat().st_mtime_ns
    again = prune_run(run_dir=str(run), sparsity=0.5, tflite=False, **QUICK_PRUNE)
    assert report_file.stat().st_mtime_ns == stamp
    # (the sweep's result came through JSON)
    assert json.loads(json.dumps(again["reports"][0]["pruned"])) == result["reports"][1]["pruned"]


def test_lottery_ticket_is_reported_beside_one_shot_pruning(trained_run, comparisons):
    result = prune_run(run_dir=str(trained_run), method="lottery", sparsity=0.5, rounds=2,
                       train_epochs=1, tflite=False, out=str(comparisons), **QUICK_PRUNE)
    report = result["reports"][0]
    assert report["lottery"]["rounds"] == pytest.approx([1 - 0.5 ** 0.5, 0.5])
    assert report["pruned"]["sparsity"]["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    compared = report["compared_with"]
    assert set(compared) == {"magnitude (uniform, tfmot)", "dense network trained for the ticket",
                             "one-shot magnitude pruning of it, fine-tuned"}
    assert compared["one-shot magnitude pruning of it, fine-tuned"]["sparsity"] == pytest.approx(
        0.5, abs=1e-3)
    assert (comparisons / "lottery-s0.50" / "history.csv").exists()
    assert not (comparisons / "lottery-s0.50" / "checkpoints").exists()


def test_layer_sensitive_pruning_meets_the_global_target(trained_run, comparisons):
    result = prune_run(run_dir=str(trained_run), method="sensitivity", sparsity=0.5,
                       rates=(0.3, 0.6, 0.9), tflite=False, out=str(comparisons),
                       **QUICK_PRUNE)
    report = result["reports"][0]
    targets = report["layer_sparsity"]
    sizes = {n: r["params"] for n, r in report["pruned"]["sparsity"]["layers"].items()}
    assert sum(targets.get(n, 0) * sizes[n] for n in sizes) / sum(sizes.values()) == \
        pytest.approx(0.5, abs=1e-6)
    assert report["pruned"]["sparsity"]["total"]["sparsity"] == pytest.approx(0.5, abs=2e-3)
    assert len(set(round(v, 3) for v in targets.values())) > 1  # not uniform
    sens = report["sensitivity"]
    assert set(sens["drops"]) == set(sizes) and all(len(d) == 3 for d in sens["drops"].values())
    assert "magnitude (uniform, tfmot)" in report["compared_with"]


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.0"], r"sparsity must be in \[0, 1\)"),
    (["--sparsity", "0.2,x"], "comma-separated numbers"),
    (["--m-by-n", "4:4"], "need 0 < m < n"),
    (["--m-by-n", "2:4", "--sparsity", "0.3"], "leave out --sparsity"),
    (["--layers", "stem_bn"], r"'stem_bn' \(BatchNormalization\) cannot be pruned"),
    (["--method", "sensitivity", "--sparsity", "0.95"], "above the largest sensitivity rate"),
])
def test_cli_bad_input_is_one_line_and_exit_2(trained_run, argv, message, capsys, tmp_path):
    try:
        code = main([str(trained_run), "--out", str(tmp_path / "p"), *argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert re.search(message, err), err
    assert not (tmp_path / "p").exists()


def test_cli_refuses_a_folder_without_a_trained_classifier(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no trained classifier" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_readme_prune_commands_parse():
    import shlex
    from pathlib import Path

    from keras_supcon.cli.prune import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [line.split("#")[0] for line in readme.splitlines()
             if line.startswith("python -m keras_supcon.prune")]
    assert len(lines) >= 5
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[3:])
        assert args.run_dir == "RUN_DIR"


def test_a_finished_job_with_other_settings_is_not_reused(sweep, capsys):
    run, _, _, _ = sweep
    assert main([str(run), "--sparsity", "0.5", "--epochs", "2", "--no-tflite"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished job with other settings (epochs: 1 there, 2 now)" in err


def test_pruning_leaves_tf_keras_and_the_environment_as_they_were(sweep):
    """tfmot's import sets TF_USE_LEGACY_KERAS=1 and turns tf.keras into Keras 2 for
    the whole process; after a prune in a fresh process (the sweep's) both are as before."""
    environment = sweep[3]
    assert environment["legacy"] is None and environment["tf_keras"].startswith("3."), environment
