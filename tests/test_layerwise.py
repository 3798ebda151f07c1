"""Greedy layer-wise auto-encoder pre-training end to end on digits (8 x 8 x 3 inputs,
hidden layers [32, 16]): one run crashes during fine-tuning and is resumed; its
outputs, the initialisation of the classifier by the auto-encoders, the inputs
and learning of each auto-encoder, the baseline through the command line, and
the errors."""

import csv
import json
import re

import keras
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import keras_supcon.training.layerwise as layerwise
from keras_supcon.cli.layerwise import main as layerwise_main
from keras_supcon.data import load_dataset
from keras_supcon.data.pipeline import image_arrays
from keras_supcon.errors import ConfigError, RunDirError
from keras_supcon.models.mlp import encode, pixels
from keras_supcon.training.layerwise import LayerwiseConfig, train_layerwise

SETTINGS = dict(dataset="digits", image_size=8, hidden=(32, 16), pretrain_epochs=4, epochs=2,
                batch_size=32, lr=3e-3, warmup_fraction=0.0, verbose=0)


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread():
    # t-SNE (OpenMP) slows down many times over when its threads compete with
    # other work for the cores of a small, busy machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("deliberate crash")


class Epochs(keras.callbacks.Callback):
    def __init__(self, begun):
        super().__init__()
        self.begun = begun

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run that crashes after fine-tuning epoch 1 (of 2), then the resumed run.
    Records the hidden-layer weights the classifier starts fine-tuning from, and
    the stages (and epochs) each attempt trains."""
    out = tmp_path_factory.mktemp("layerwise") / "run"
    real_fit = layerwise.fit_stage
    record = {"initial": None, "first": [], "second": [], "epochs_second": []}

    def first_fit(model, *args, stage, **kwargs):
        record["first"].append(stage)
        if stage == layerwise.FINETUNE:
            record["initial"] = {layer.name: [w.copy() for w in layer.get_weights()]
                                 for layer in model.layers if layer.name.startswith("hidden_")}
            kwargs["extra_callbacks"] = [Crash()]
        return real_fit(model, *args, stage=stage, **kwargs)

    def second_fit(model, *args, stage, **kwargs):
        record["second"].append(stage)
        kwargs["extra_callbacks"] = [Epochs(record["epochs_second"])]
        return real_fit(model, *args, stage=stage, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layerwise, "fit_stage", first_fit)
        with pytest.raises(RuntimeError, match="deliberate crash"):
            train_layerwise(out=str(out), **SETTINGS)
        record["history_after_crash"] = _history(out)
        record["mtimes"] = {f: (out / f).stat().st_mtime_ns for f in ("ae1.keras", "ae2.keras")}
        record["state_after_crash"] = json.loads((out / "state.json").read_text())
        mp.setattr(layerwise, "fit_stage", second_fit)
        record["metrics"] = train_layerwise(out=str(out), resume=True)
    return out, record


def _history(out):
    with (out / "history.csv").open() as f:
        return [(r["stage"], int(r["epoch"]), float(r["loss"]), float(r["val_loss"]))
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def arrays():
    return image_arrays(load_dataset("digits", val_fraction=0.1, seed=0), 8)


def test_run_writes_metrics_figures_and_classifier(run, arrays):
    out, record = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(record["metrics"]))
    assert metrics["pretrain"] is True and metrics["hidden"] == [32, 16]
    assert set(metrics["per_class_accuracy"]) == {str(c) for c in range(10)}
    # the metrics are those of the saved classifier on the test split
    classifier = keras.models.load_model(out / "classifier.keras")
    x_test, y_test = arrays["test"]
    predicted = np.asarray(classifier(x_test, training=False)).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == y_test)), abs=1e-12)
    for c in range(10):
        assert metrics["per_class_accuracy"][str(c)] == pytest.approx(
            float(np.mean(predicted[y_test == c] == c)), abs=1e-12)
    # macro precision / recall / F1 from the same predictions, in plain numpy; a class never
    # predicted has precision 0 (sklearn's zero_division=0, which the package uses)
    hits = np.array([np.sum((predicted == c) & (y_test == c)) for c in range(10)])
    guessed = np.bincount(predicted, minlength=10)
    precision = np.divide(hits, guessed, out=np.zeros(10), where=guessed > 0)
    recall = hits / np.bincount(y_test, minlength=10)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(10), where=precision + recall > 0)
    for key, value in (("precision_macro", precision.mean()), ("recall_macro", recall.mean()),
                       ("f1_macro", f1.mean())):
        assert metrics[key] == pytest.approx(float(value), abs=1e-12), key
    # and it learnt something in its 2 epochs: 0.475 measured (macro F1 0.39; one class never
    # predicted), chance is 0.1
    assert metrics["accuracy"] > 0.25
    assert classifier.input_shape == (None, 8, 8, 3)  # raw images; /255 and flatten inside
    assert [a["stage"] for a in metrics["autoencoders"]] == ["ae1", "ae2"]
    for png in ("curves.png", "confusion.png", "tsne.png"):
        assert (out / png).stat().st_size > 10_000
    state = json.loads((out / "state.json").read_text())
    assert state == {"completed": ["ae1", "ae2", "finetune"], "finished": True}
    assert not (out / "checkpoints").exists()


def test_pretraining_initialises_the_classifier(run):
    out, record = run
    initial = record["initial"]
    assert sorted(initial) == ["hidden_1", "hidden_2"]
    final = keras.models.load_model(out / "classifier.keras")
    for k in (1, 2):
        ae = keras.models.load_model(out / f"ae{k}.keras")
        encoder = ae.get_layer("encoder").get_weights()
        for start, pretrained in zip(initial[f"hidden_{k}"], encoder):  # kernel, bias
            np.testing.assert_array_equal(start, pretrained)
        # ... and fine-tuning then trained the whole stack, not only the softmax layer
        tuned = final.get_layer(f"hidden_{k}").get_weights()[0]
        assert np.abs(tuned - encoder[0]).max() > 1e-4


def test_each_autoencoder_reconstructs_the_previous_layers_codes(run, arrays):
    out, record = run
    ae1, ae2 = (keras.models.load_model(out / f"ae{k}.keras") for k in (1, 2))
    assert ae1.input_shape == (None, 8 * 8 * 3) and ae1.output_shape == (None, 8 * 8 * 3)
    assert ae1.get_layer("encoder").get_weights()[0].shape == (192, 32)
    assert ae2.input_shape == (None, 32) and ae2.output_shape == (None, 32)
    assert ae2.get_layer("encoder").get_weights()[0].shape == (32, 16)
    assert ae1.get_layer("decoder").get_config()["activation"] == "sigmoid"  # pixels in [0, 1]
    assert ae2.get_layer("decoder").get_config()["activation"] == "linear"  # ReLU codes

    by_stage = {a["stage"]: a for a in record["metrics"]["autoencoders"]}
    x_val = pixels(arrays["val"][0])
    codes = encode([ae1], x_val)  # the layer-1 codes ae2 was trained to reconstruct
    assert float(codes.max()) > 1.0 and float((codes == 0).mean()) > 0  # ReLU, not pixels
    for stage, ae, target in (("ae1", ae1, x_val), ("ae2", ae2, codes)):
        mse = float(np.mean((np.asarray(ae(target, training=False)) - target) ** 2))
        assert by_stage[stage]["val_mse"] == pytest.approx(mse, rel=1e-4)
        assert by_stage[stage]["input_width"] == target.shape[1]
        # it learned: clearly better than always predicting the mean input
        assert mse < 0.8 * float(np.mean((target - target.mean(axis=0)) ** 2))
        assert 0 < by_stage[stage]["val_relative_mse"] < 0.8


def test_reconstruction_error_decreases_over_epochs(run):
    history = _history(run[0])
    for stage in ("ae1", "ae2"):
        rows = [r for r in history if r[0] == stage]
        assert [r[1] for r in rows] == [1, 2, 3, 4]
        train_loss, val_loss = [r[2] for r in rows], [r[3] for r in rows]
        assert all(b < a for a, b in zip(train_loss, train_loss[1:])), (stage, train_loss)
        assert all(b < a for a, b in zip(val_loss, val_loss[1:])), (stage, val_loss)
        assert val_loss[-1] < 0.9 * val_loss[0]


def test_resume_continues_after_the_last_completed_epoch(run):
    out, record = run
    assert record["first"] == ["ae1", "ae2", "finetune"]
    assert record["state_after_crash"]["completed"] == ["ae1", "ae2"]
    assert [r[:2] for r in record["history_after_crash"]][-1] == ("finetune", 1)
    # the second attempt trains only fine-tuning epoch 2; the auto-encoders are loaded
    assert record["second"] == ["finetune"]
    assert record["epochs_second"] == [1]
    for name, mtime in record["mtimes"].items():
        assert (out / name).stat().st_mtime_ns == mtime
    history = _history(out)
    assert [r[:2] for r in history] == ([("ae1", e) for e in range(1, 5)]
                                        + [("ae2", e) for e in range(1, 5)]
                                        + [("finetune", 1), ("finetune", 2)])
    assert history[:-1] == record["history_after_crash"]


def test_finished_run_is_not_rerun(run):
    out, _ = run
    with pytest.raises(RunDirError, match="already holds a finished run; use --overwrite"):
        train_layerwise(out=str(out), **SETTINGS)
    with pytest.raises(RunDirError, match="already finished"):
        train_layerwise(out=str(out), resume=True)


def test_cli_baseline_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "baseline.toml"
    config.write_text('hidden = [32, 16]\npretrain = false\nimage-size = 8\nverbose = 0\n')
    out = tmp_path / "baseline"
    rc = layerwise_main(["--config", str(config), "--epochs", "1", "--batch-size", "64",
                         "--tsne-layer", "1", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"test accuracy \d\.\d{{4}} \| macro F1 \d\.\d{{4}} \| "
                        rf"run directory: {re.escape(str(out))}", line)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["hidden"] == [32, 16] and settings["pretrain"] is False
    assert settings["tsne_layer"] == 1 and settings["epochs"] == 1
    assert [r[:2] for r in _history(out)] == [("finetune", 1)]
    assert not list(out.glob("ae*.keras"))
    assert json.loads((out / "metrics.json").read_text())["autoencoders"] == []
    assert (out / "tsne.png").is_file() and (out / "curves.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "64,0"], "hidden layer widths must be positive integers; got [64, 0]"),
    (["--hidden", ""], "at least one hidden layer width"),
    (["--hidden", "64,x"], "got '64,x'"),
    (["--hidden", "64,32", "--tsne-layer", "5"],
     "tsne layer 5 is out of range: the network has 2 hidden layer(s), numbered 1 to 2"),
    (["--epochs", "0"], "epochs must be an integer >= 1; got 0"),
    (["--activation", "tanh"], "invalid choice: 'tanh'"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    try:
        rc = layerwise_main([*argv, "--out", str(out)])
    except SystemExit as exc:  # argparse's own errors (through cli.Parser.error)
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("settings, message", [
    (dict(hidden=[]), "at least one hidden layer width"),
    (dict(hidden=[1024, 0]), r"got \[1024, 0\]"),
    (dict(hidden=[64, 32.5]), r"got \[64, 32.5\]"),
    (dict(hidden=[64], tsne_layer=0), "tsne layer 0 is out of range"),
    (dict(pretrain_epochs=0), "pretrain epochs must be an integer >= 1"),
    (dict(early_stopping=0), "early-stopping patience must be >= 1"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(activation="tanh"), "unknown activation 'tanh'"),
])
def test_config_validation(settings, message):
    with pytest.raises(ConfigError, match=message):
        LayerwiseConfig(**settings).validate()


def test_config_defaults():
    config = LayerwiseConfig(hidden="256, 64").validate()
    assert config.hidden == (256, 64) and config.tsne_layer == 2
    assert config.image_size == 32 and config.pretrain_lr == config.lr
    assert LayerwiseConfig().validate().hidden == (1024, 1200, 728, 512, 128)
