"""End-to-end: the whole job through the library and the CLI, resume, errors, README snippet."""

import csv
import dataclasses
import json
import logging
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import batchnorm_momenta

import keras_supcon
from keras_supcon._cpu import cpu_kind
from keras_supcon.cli.train import main
from keras_supcon.compression import serve_saved_model
from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.training import train
from keras_supcon.training.probe import C_GRID

# precise BatchNorm statistics over 4 clean batches, not 100: the same code path, ~3 s less a run
QUICK = dict(backbone="small_resnet", image_size=8, epochs=1, linear_epochs=1, batch_size=32,
             precise_bn_batches=4, verbose=0)
README = Path(__file__).resolve().parents[1] / "README.md"


class _Crash(keras.callbacks.Callback):
    """Simulates an interrupted run: raises after a given epoch of a given stage."""

    fired = False

    def __init__(self, stage, epoch):
        super().__init__()
        self.stage, self.epoch = stage, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and not _Crash.fired:
            _Crash.fired = True
            raise KeyboardInterrupt("simulated interruption")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A SupCon run of 3 epochs, interrupted after its second pre-training epoch and
    resumed (``train(out=..., resume=True)``): every finished-run check below is made on
    a resumed run. Returns the run directory, the metrics and what the interruption
    left (``epochs_run``: the epochs each ``fit`` started, both runs together)."""
    import keras_supcon.training.stages as stages_module

    real = stages_module.stage_callbacks
    epochs_run = []

    def with_crash(run, stage, **kw):
        class Count(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                epochs_run.append((stage, epoch + 1))
        extra = [_Crash(stage, 1)] if stage == "pretrain" else []
        return real(run, stage, **kw) + [Count()] + extra

    out = tmp_path_factory.mktemp("runs") / "supcon"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages_module, "stage_callbacks", with_crash)
        with pytest.raises(KeyboardInterrupt):
            train(out=str(out), **dict(QUICK, epochs=3, linear_epochs=2))
        interrupted = {"checkpoint": (out / "checkpoints" / "pretrain").exists(),
                       "metrics": (out / "metrics.json").exists()}
        metrics = train(out=str(out), resume=True)
    return out, metrics, {"epochs_run": epochs_run, **interrupted}


def test_resume_continues_from_the_last_checkpoint(finished_run):
    out, metrics, interrupted = finished_run
    assert interrupted["checkpoint"] and not interrupted["metrics"]
    # (the linear probe is fitted on cached features, not by model.fit epochs)
    assert interrupted["epochs_run"] == [("pretrain", 1), ("pretrain", 2), ("pretrain", 3)]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [
        ("pretrain", 1), ("pretrain", 2), ("pretrain", 3)] + [
        ("linear", i) for i in range(1, len(C_GRID) + 1)]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_run_writes_every_output(finished_run):
    out, metrics, _ = finished_run
    for name in ["config.json", "history.csv", "metrics.json", "curves.png", "tsne.png",
                 "confusion.png", "encoder.keras", "classifier.keras", "saved_model",
                 "state.json"]:
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["backbone"] == "small_resnet"
    assert config["settings"]["temperature"] == 0.1
    assert {"keras", "tensorflow"} <= set(config["versions"])
    assert config["cpu"] == cpu_kind()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["accuracy"] == metrics["accuracy"]
    assert set(on_disk) >= {"accuracy", "top5_accuracy", "precision_macro", "recall_macro",
                            "f1_macro", "per_class_accuracy", "confusion_matrix", "class_names"}
    assert np.array(on_disk["confusion_matrix"]).sum() == on_disk["num_examples"] == 360
    rows = list(csv.DictReader((out / "history.csv").open()))
    # the linear probe: one row per L2 strength C tried on the cached features
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("pretrain", str(e)) for e in (1, 2, 3)] + [
        ("linear", str(i)) for i in range(1, len(C_GRID) + 1)]
    assert [float(r["C"]) for r in rows[3:]] == list(C_GRID)
    best = max(rows[3:], key=lambda r: float(r["val_accuracy"]))
    assert on_disk["probe"]["C"] == float(best["C"])
    assert on_disk["probe"]["val_accuracy"] == float(best["val_accuracy"])
    assert config["settings"]["probe_fit"] == "cached"
    assert config["settings"]["bn_momentum"] == 0.9
    # digits get the digits policy: no flips; the classifier stages its crops only
    assert config["settings"]["augmentation"] is None   # as given: the source default
    assert config["augmentation"]["name"] == "digits"
    assert config["augmentation"]["views"]["flip"] is False
    assert config["augmentation"]["classifier"]["jitter_prob"] == 0.0


def test_saved_model_reproduces_the_keras_classifier(finished_run):
    out, _, _ = finished_run
    classifier = keras.models.load_model(out / "classifier.keras")
    images, _ = next(iter(supervised_batches(load_dataset("digits").test, QUICK["image_size"],
                                             64)))
    served = serve_saved_model(out / "saved_model", images.numpy())
    np.testing.assert_allclose(served, np.asarray(classifier(images)), rtol=1e-5, atol=1e-6)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    sig = loaded.signatures["serving_default"]
    assert list(sig.structured_outputs) == ["probabilities"]
    size = QUICK["image_size"]
    assert sig.structured_input_signature[1]["images"].shape.as_list() == [None, size, size, 3]


def test_cli_refuses_a_finished_run_without_overwrite(finished_run, capsys):
    out, _, _ = finished_run
    assert main(["--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a finished run" in err


def run_cli(argv):
    """``main(argv)``'s exit status, also when argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv,message", [
    (["--backbone", "vgg99"], "invalid choice: 'vgg99'"),
    (["--loss", "hinge"], "invalid choice: 'hinge'"),
    (["--dataset", "no_such_tfds_set"], "unknown dataset 'no_such_tfds_set'"),
    (["--dataset", "missing/file.npz"], "no such file"),
    (["--backbone", "inceptionv3", "--image-size", "64"], "below the minimum of inceptionv3"),
    (["--batch-size", "1"], "batch size >= 2"),
    (["--resume"], "--resume needs --out"),
    (["--weights", "nowhere.h5"], "weights file not found"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--crop-scale", "1.5"], "crop scale must be in (0, 1]"),
    (["--jitter", "-0.1"], "colour-jitter strength must be >= 0"),
    (["--augmentation", "photo"], "invalid choice: 'photo'"),
    (["--loss", "supcon+ce", "--supcon-weight", "-1"], "supcon weight must be >= 0"),
    (["--probe", "nn", "--probe-epochs", "0"], "probe_epochs must be >= 1"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    argv = argv + (["--out", str(tmp_path / "r")] if "--resume" not in argv else [])
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0, err
    assert message in err


def test_cli_resume_without_checkpoint(capsys, tmp_path):
    assert main(["--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_bad_labels_in_npz_are_reported(capsys, tmp_path):
    x = np.zeros((8, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8), x_test=x, y_test=np.arange(8),
             class_names=np.array(["a", "b", "c"]))
    assert main(["--dataset", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r")]) == 2
    assert re.search(r"error: .*y_train: 5 label\(s\) outside \[0, 3\)", capsys.readouterr().err)


def test_linear_probe_refit_on_train_and_validation():
    """--probe-refit: C is chosen on validation as before, then the probe is scikit-learn's
    fit with that C on both splits, standardised on both."""
    from sklearn.linear_model import LogisticRegression

    from keras_supcon.training.probe import fit_logistic_probe

    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 6))
        return x, (x[:, 0] + rng.normal(size=n) > 0) + 2 * (x[:, 1] > 0)

    train_split, val_split = split(80), split(40)
    kernel, bias, chosen = fit_logistic_probe(train_split, val_split, 4)
    kernel2, bias2, refit = fit_logistic_probe(train_split, val_split, 4, refit=True)
    assert (chosen["fitted_on"], chosen["fitted_images"]) == ("train", 80)
    assert (refit["fitted_on"], refit["fitted_images"]) == ("train+validation", 120)
    assert (refit["C"], refit["grid"], refit["val_accuracy"]) == (
        chosen["C"], chosen["grid"], chosen["val_accuracy"])
    x = np.concatenate([train_split[0], val_split[0]])
    y = np.concatenate([train_split[1], val_split[1]])
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=chosen["C"], max_iter=1000).fit(z, y)
    np.testing.assert_allclose(x @ kernel2 + bias2, reference.decision_function(z),
                               rtol=1e-9, atol=1e-9)
    assert np.abs(kernel2 - kernel).max() > 1e-3  # the refit is another probe


def test_ce_and_npairs_losses_run(tmp_path):
    for loss in ("ce", "npairs"):
        metrics = train(out=str(tmp_path / loss), loss=loss, bn_momentum=0.8, **QUICK)
        assert metrics["accuracy"] > 0.2, (loss, metrics["accuracy"])  # chance: 0.1
        classifier = keras.models.load_model(tmp_path / loss / "classifier.keras")
        assert batchnorm_momenta(classifier) == {0.8}, loss
    history = list(csv.DictReader((tmp_path / "ce" / "history.csv").open()))
    assert [r["stage"] for r in history] == ["ce"]


def test_settings_of_older_runs_mean_what_those_runs_did():
    from keras_supcon.training import TrainConfig

    old = TrainConfig.from_dict({"loss": "supcon", "linear_epochs": 2})  # before issue 14
    assert (old.augmentation, old.probe_fit) == ("simclr", "images")
    # before 2026-11-25 every BatchNorm layer had Keras' momentum and no precise statistics:
    # a lottery ticket or an ablation rebuilding such a run builds what it trained
    assert (old.bn_momentum, old.precise_bn_batches) == (0.99, 0)
    assert TrainConfig.from_dict({"probe_solver": "lbfgs"}).probe_fit == "cached"
    new = dataclasses.asdict(TrainConfig(probe="nn"))
    assert TrainConfig.from_dict(new) == TrainConfig(probe="nn")   # None: the source default


def test_epochs_default_follows_the_kind_of_loss(tmp_path):
    """5 epochs of pre-training (the probe is then fitted to convergence), 20 of an
    end-to-end classifier (chosen on validation, docs/experiments.md); ResNet-50 has its own
    lr and epochs for pre-training and epochs for end-to-end training; given values, and
    those saved in an older run's config.json, are kept."""
    from keras_supcon.training import TrainConfig

    expected = {"supcon": 5, "npairs": 5, "barlow": 5, "ce": 20, "center": 20, "supcon+ce": 20}
    for loss, epochs in expected.items():
        assert TrainConfig(loss=loss, out=str(tmp_path)).validate().epochs == epochs, loss
    assert TrainConfig(loss="ce", epochs=3, out=str(tmp_path)).validate().epochs == 3
    old_run = TrainConfig.from_dict({"loss": "ce", "epochs": 5, "lr": 2e-3, "out": str(tmp_path)})
    assert (old_run.validate().epochs, old_run.lr) == (5, 2e-3)
    # ResNet-50's and InceptionV3's own defaults (the backbone registry), by the loss's kind
    r50 = {loss: TrainConfig(loss=loss, backbone="resnet50", out=str(tmp_path)).validate()
           for loss in ("supcon", "npairs", "ce", "supcon+ce")}
    assert [(r50[k].epochs, r50[k].lr) for k in ("supcon", "npairs", "ce", "supcon+ce")] == [
        (20, 3e-3), (20, 3e-3), (40, 1e-3), (40, 1e-3)]
    iv3_ce = TrainConfig(loss="ce", backbone="inceptionv3", out=str(tmp_path)).validate()
    assert (iv3_ce.epochs, iv3_ce.lr) == (20, 1e-3)
    iv3 = TrainConfig(backbone="inceptionv3", out=str(tmp_path)).validate()
    assert (iv3.epochs, iv3.lr) == (10, 3e-3)
    given = TrainConfig(backbone="resnet50", epochs=2, lr=1e-2, out=str(tmp_path)).validate()
    assert (given.epochs, given.lr) == (2, 1e-2)
    assert TrainConfig(out=str(tmp_path)).validate().lr == 1e-3


def test_joint_supcon_ce_run(tmp_path):
    metrics = train(out=str(tmp_path / "joint"), loss="supcon+ce", supcon_weight=0.5,
                    **dict(QUICK, epochs=2))
    history = list(csv.DictReader((tmp_path / "joint" / "history.csv").open()))
    assert [r["stage"] for r in history] == ["ce", "ce"]
    assert {"probabilities_loss", "projections_loss", "val_probabilities_accuracy"} <= set(
        history[0])
    best = max(float(r["val_probabilities_accuracy"]) for r in history)
    assert best > 0.5 and metrics["accuracy"] > 0.5, (best, metrics["accuracy"])
    classifier = keras.models.load_model(tmp_path / "joint" / "classifier.keras")
    assert classifier.output_shape == (None, 10)
    assert batchnorm_momenta(classifier) == {0.9}  # the default run momentum, not Keras' 0.99


@pytest.mark.bfloat16
def test_mixed_precision_run(tmp_path):
    try:
        metrics = train(out=str(tmp_path / "mp"), mixed_precision=True, **QUICK)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(metrics["f1_macro"]) and metrics["saved_model_max_abs_diff"] < 1e-4
    rows = list(csv.DictReader((tmp_path / "mp" / "history.csv").open()))
    assert all(np.isfinite(float(r["loss"])) for r in rows if r["stage"] == "pretrain")
    assert all(np.isfinite(float(r["val_accuracy"])) for r in rows if r["stage"] == "linear")


def test_readme_python_snippet_runs():
    """The README's Python API snippets as written, at one epoch each instead of five: the
    API they show works. Their accuracy claims are experiments/readme_snippet.py's (the
    snippets as written; result in docs/results.md)."""
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    first, joint = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace = {}
    for code in (first, joint):
        assert code.count("epochs=5") == 1, "the budget this test shortens"
        exec(compile(code.replace("epochs=5", "epochs=1"), str(README), "exec"), namespace)
    assert namespace["classifier"].output_shape == (None, 10)
    # one epoch: far above chance (0.1), not the README's five-epoch numbers
    assert namespace["results"]["accuracy"] > 0.5, namespace["results"]
    assert namespace["joint_results"]["accuracy"] > 0.5, namespace["joint_results"]


def test_package_entry_point_survives_importing_the_cli():
    import keras_supcon.train as cli

    assert callable(cli.main) and keras_supcon.run_training is train


def test_readme_commands_are_the_ones_tested():
    text = README.read_text()
    assert "python -m keras_supcon.train --backbone densenet201" in text
    assert "```bash\npython -m pytest\n```" in text
    # CI runs that same command, the whole suite, as its last step
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "python -m pytest"


def test_supcon_runs_on_real_cifar10_images(cifar_tiny, tmp_path):
    """The CIFAR-10 path (a .npz of real 32x32 RGB images, 10 classes) end to end, at a smoke
    budget on the committed fixture. The learning claim (test accuracy > 0.2, kNN > 0.3 after
    5 epochs on the shared subset) is experiments/cifar_short_run.py's, in docs/results.md."""
    metrics = train(out=str(tmp_path / "cifar"), dataset=str(cifar_tiny),
                    **dict(QUICK, image_size=16))
    assert metrics["num_examples"] == 200
    assert sorted(metrics["per_class_accuracy"]) == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"])


def test_a_classifier_significantly_below_its_knn_vote_is_warned(caplog):
    from keras_supcon.training.job import _warn_below_knn

    with caplog.at_level(logging.WARNING, logger="keras_supcon.training.job"):
        _warn_below_knn({"classifier_only": 3, "knn_only": 16, "mcnemar_p": 0.004})
        _warn_below_knn({"classifier_only": 10, "knn_only": 15, "mcnemar_p": 0.42})  # noise
        _warn_below_knn({"classifier_only": 16, "knn_only": 3, "mcnemar_p": 0.004})  # above
    assert len(caplog.records) == 1
    assert "16 test images only the kNN vote gets right, 3 only the classifier" in caplog.text
