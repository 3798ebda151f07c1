"""The methods beside SupCon in the training job: triplet / Barlow Twins pre-training,
center loss, MLP probes, fine_tune_linear / fine_tune_nn, the softmax-regression
baseline, pseudo-labelling, and their one-line errors."""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from checks import architecture, batchnorm_momenta
from tolerances import F32

import keras_supcon.compression.lottery as lottery_module
from keras_supcon.cli.pseudo_label import main as pseudo_main
from keras_supcon.cli.train import main as train_main
from keras_supcon.compression.lottery import lottery_ticket
from keras_supcon.compression.prune import prunable_layers
from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.data.pools import split_pools, unlabelled_subset
from keras_supcon.errors import ConfigError
from keras_supcon.evaluation import predict
from keras_supcon.losses import CenterLoss
from keras_supcon.losses.registry import build_pretraining_loss as pretraining_loss
from keras_supcon.models import build_classifier, build_encoder
from keras_supcon.models.batchnorm import batchnorm_layers
from keras_supcon.runs import callbacks as callbacks_module
from keras_supcon.runs.rundir import RunDir
from keras_supcon.training import fine_tune_linear, fine_tune_nn, train
from keras_supcon.training import stages as stages_module
from keras_supcon.training.build import center_loss_model
from keras_supcon.training.pseudo import parse_ratios, run_pseudo_labelling
from keras_supcon.training.settings import TrainConfig

# precise BatchNorm statistics over 4 clean batches, not 100: the same code path, ~3 s less a run
QUICK = dict(backbone="small_resnet", image_size=8, epochs=1, linear_epochs=1, batch_size=32,
             precise_bn_batches=4, verbose=0)


def _history_stages(out):
    import csv
    return list(dict.fromkeys(r["stage"] for r in csv.DictReader((out / "history.csv").open())))


BARLOW = dict(head_hidden=64, projection_dim=32)
NN_PROBE = dict(probe="nn", probe_hidden=24, probe_epochs=30, l2=1e-4)


@pytest.fixture(scope="module")
def barlow_run(tmp_path_factory):
    """A Barlow Twins run (BatchNorm momentum 0.8) with the nn probe, and the BatchNorm
    layers each precise-BN pass recomputed: the method's whole job, the nn probe's checks
    and the encoder fine-tuned below."""
    out = tmp_path_factory.mktemp("methods") / "barlow"
    calibrated = []
    real = stages_module.precise_batchnorm

    def recording(model, *args, **kwargs):
        calibrated.append({layer.name for layer in batchnorm_layers(model)})
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages_module, "precise_batchnorm", recording)
        mp.setattr(callbacks_module, "precise_batchnorm", recording)
        metrics = train(loss="barlow", out=str(out), bn_momentum=0.8, **QUICK, **BARLOW,
                        **NN_PROBE)
    return out, metrics, calibrated


def _check_method_run(out, metrics, loss, settings, stages):
    assert _history_stages(out) == stages
    assert metrics["accuracy"] > 0.2 and metrics["embedding"]["knn_accuracy"] > 0.2  # chance 0.1
    saved = json.loads((out / "config.json").read_text())["settings"]
    assert saved["loss"] == loss and all(saved[k] == v for k, v in settings.items())
    classifier = keras.models.load_model(out / "classifier.keras")
    assert "center_loss" not in [layer.name for layer in classifier.layers]  # inference model
    assert batchnorm_momenta(classifier, keras.models.load_model(out / "encoder.keras")) == {0.8}
    assert (out / "saved_model").exists() and metrics["saved_model_max_abs_diff"] < 1e-4


@pytest.mark.parametrize("loss, settings, stages", [
    # (the linear probe refit on train + validation once C is chosen)
    ("triplet", dict(mining="hard", margin=0.3, probe_refit=True), ["pretrain", "linear"]),
    ("center", dict(center_weight=0.01), ["ce"]),
])
def test_each_method_runs_the_whole_job(tmp_path, loss, settings, stages):
    out = tmp_path / loss
    metrics = train(loss=loss, out=str(out), bn_momentum=0.8, **QUICK, **settings)
    _check_method_run(out, metrics, loss, settings, stages)
    if settings.get("probe_refit"):
        probe = json.loads((out / "probe.json").read_text())
        data = load_dataset("digits")
        assert probe["fitted_on"] == "train+validation"
        assert probe["fitted_images"] == data.sizes["train"] + data.sizes["val"]


def test_barlow_twins_runs_the_whole_job(barlow_run):
    out, metrics, _ = barlow_run
    _check_method_run(out, metrics, "barlow", {**BARLOW, **NN_PROBE}, ["pretrain", "linear"])


def test_pretraining_losses_get_their_settings():
    triplet = pretraining_loss(TrainConfig(loss="triplet", margin=0.5, mining="all",
                                           squared_distance=True).validate())
    assert (triplet.margin, triplet.mining, triplet.squared) == (0.5, "all", True)
    barlow = pretraining_loss(TrainConfig(loss="barlow", barlow_lambda=0.01).validate())
    assert barlow.lambda_ == 0.01


def test_center_loss_model_shares_the_classifier_and_updates_centres():
    classifier = build_classifier(build_encoder("small_resnet", 8), 3)
    model = center_loss_model(classifier, 3, weight=0.5, alpha=0.5)
    images = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2], "int32")
    np.testing.assert_allclose(np.asarray(model([images, labels])), np.asarray(classifier(images)),
                               **F32)
    assert {id(w) for w in classifier.weights} < {id(w) for w in model.weights}
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    centres = model.get_layer("center_loss").centers
    before = np.array(centres)
    ce_only = float(keras.losses.sparse_categorical_crossentropy(
        labels, classifier(images)).numpy().mean())
    total = model.train_on_batch([images, labels], labels)
    assert not np.allclose(np.array(centres), before)  # updated during fit
    assert total > ce_only + 1e-3  # the weighted center loss is part of the training loss


def test_nn_probe_and_softmax_regression_options(barlow_run, tmp_path, monkeypatch):
    out, metrics, _ = barlow_run  # the nn probe (NN_PROBE) on the Barlow Twins encoder
    classifier = keras.models.load_model(out / "classifier.keras")
    assert classifier.get_layer("hidden").units == 24
    assert batchnorm_momenta(classifier) == {0.8}
    # The lottery ticket prunes this architecture: its networks come from the run's builder,
    # with the nn probe's hidden layer, the L2 penalty and the BatchNorm momentum (training
    # replaced by a no-op: only the models it builds are compared)
    monkeypatch.setattr(lottery_module, "train_classifier", lambda *args, **kwargs: None)
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["settings"])
    networks = lottery_ticket(config.validate(), load_dataset("digits"), RunDir(tmp_path / "lt"),
                              prunable_layers(classifier), sparsity=0.5)
    for name in ("dense", "one_shot", "ticket"):
        assert architecture(networks[name]) == architecture(classifier), name
        assert batchnorm_momenta(networks[name]) == {0.8}, name
    assert not classifier.get_layer("encoder_small_resnet").trainable
    # trained on cached features: one history row per epoch, the best validation kept
    rows = [r for r in csv.DictReader((out / "history.csv").open()) if r["stage"] == "linear"]
    assert len(rows) == 30
    probe = json.loads((out / "probe.json").read_text())
    assert probe["val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert metrics["probe"]["epoch"] == probe["epoch"]
    # the standardisation folded into the saved classifier: on the validation images
    # it scores what the probe scored on the standardised features
    data = load_dataset("digits")
    probs, labels = predict(classifier, supervised_batches(data.val, QUICK["image_size"], 256))
    assert abs((probs.argmax(1) == labels).mean() - probe["val_accuracy"]) <= 1 / len(labels)

    out = tmp_path / "softmax"
    metrics = train(loss="ce", backbone="pixels", image_size=8, epochs=3, batch_size=32,
                    l2=1e-3, clipnorm=1.0, augment=False, early_stopping=1, verbose=0,
                    out=str(out))
    classifier = keras.models.load_model(out / "classifier.keras")
    assert [type(layer).__name__ for layer in classifier.layers][1:] == ["Functional", "Dense"]
    assert classifier.get_layer("probabilities").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert classifier.get_layer("probabilities").kernel.shape == (8 * 8 * 3, 10)
    assert metrics["accuracy"] > 0.5  # softmax regression on digits is a real classifier


def test_fine_tune_linear_and_nn_on_a_pretrained_encoder(barlow_run, tmp_path):
    run, _, calibrated = barlow_run
    # the Barlow projector's BatchNorm layers are recalibrated with the encoder's
    encoder_bn = {layer.name for layer in batchnorm_layers(
        keras.models.load_model(run / "encoder.keras"))}
    assert encoder_bn and calibrated
    assert all(names == encoder_bn | {"projector_bn1", "projector_bn2"} for names in calibrated)
    data = load_dataset("digits")
    _, linear = fine_tune_linear(run / "encoder.keras", data, out=str(tmp_path / "lin"),
                                 linear_epochs=2, verbose=0)
    # a --dataset string is the data the probe is trained and tested on
    tiny = str(Path(__file__).parent / "data" / "cifar10_tiny.npz")
    nn_classifier, nn = fine_tune_nn(keras.models.load_model(run / "encoder.keras"), tiny,
                                     hidden=16, out=str(tmp_path / "nn"), linear_epochs=2,
                                     verbose=0)
    assert nn_classifier.get_layer("hidden").units == 16
    tiny_data = load_dataset(tiny)
    assert (nn["dataset"], nn["num_examples"]) == (tiny_data.name, tiny_data.sizes["test"])
    assert linear["dataset"] == "digits"
    with pytest.raises(ConfigError, match="give the data once"):
        fine_tune_linear(run / "encoder.keras", tiny, dataset="digits", out=str(tmp_path / "x"))
    for m, path in ((linear, tmp_path / "lin"), (nn, tmp_path / "nn")):
        on_disk = json.loads((path / "metrics.json").read_text())
        assert on_disk["accuracy"] == m["accuracy"] and 0 < m["accuracy"] <= 1
        pair = m["embedding"]["classifier_vs_knn"]  # the probe beside the encoder's kNN vote
        assert pair["classifier_only"] - pair["knn_only"] == round(
            (m["accuracy"] - m["embedding"]["knn_accuracy"]) * m["num_examples"])
    # the encoder stayed frozen: its weights are the pre-trained ones
    pre = keras.models.load_model(run / "encoder.keras")
    for a, b in zip(pre.get_weights(),
                    nn_classifier.get_layer("encoder_small_resnet").get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ pseudo-labelling
def test_parse_ratios():
    assert parse_ratios("1:0,1:0.4,1:1,1:2,1:10") == (0.0, 0.4, 1.0, 2.0, 10.0)
    assert parse_ratios([2, 0.5]) == (0.5, 2.0)
    for bad, match in [("1:x", "not a labelled:unlabelled"), ("2:1", "not a labelled"),
                       ("1:-1", ">= 0"), ("1:1,1:1", "repeated"), ("", "empty")]:
        with pytest.raises(Exception, match=match):
            parse_ratios(bad)


def test_holdout_pools_are_disjoint_and_stratified():
    data = load_dataset("digits")
    labelled, n, pool_ds, (pool_idx, labels), known = split_pools(
        data, "digits", labelled=100, max_ratio=2.0)
    assert known and n == 100 and len(pool_idx) == data.sizes["train"] - 100
    got = np.concatenate([y.numpy() for _, y in labelled.batch(512)])
    assert np.bincount(got, minlength=10).min() >= 9  # about 10 of each class
    train_images = np.concatenate([x.numpy() for x, _ in data.train.batch(2048)])
    labelled_images = np.concatenate([x.numpy() for x, _ in labelled.batch(512)])
    flat = {im.tobytes() for im in labelled_images}
    assert not any(train_images[i].tobytes() in flat for i in pool_idx)
    # sizes known to Keras (a filter's are not: fit / predict would warn at each first pass)
    assert int(labelled.cardinality()) == 100
    subset, size = unlabelled_subset(pool_ds, (pool_idx, labels), 150)
    assert size == 150 and int(subset.cardinality()) == 150
    assert sum(1 for _ in subset) == 150


def test_pseudo_labelling_study(tmp_path):
    out = tmp_path / "pl"
    result = run_pseudo_labelling(TrainConfig(loss="ce", **{**QUICK, "epochs": 3},
                                              bn_momentum=0.8), lr=3e-3,
                                  labelled=200, ratios="1:0,1:1,1:2", threshold=0.9, rounds=1,
                                  out=str(out))
    rows = result["rows"]
    assert [(r["ratio"], r["round"]) for r in rows] == [(0.0, 0), (1.0, 1), (2.0, 1)]
    assert [r["unlabelled"] for r in rows] == [0, 200, 400]
    # kept and pseudo-label accuracy recomputed from the saved teacher
    data = load_dataset("digits")
    _, _, pool_ds, pool, _ = split_pools(data, "digits", labelled=200, max_ratio=2.0)
    teacher = keras.models.load_model(out / "teacher.keras")
    mask = np.zeros(len(pool[1]), bool)
    mask[pool[0][:400]] = True
    images = np.concatenate([x.numpy() for x, _ in data.train.batch(4096)])[mask]
    truth = pool[1][mask]
    probs, _ = predict(teacher, supervised_batches(
        __import__("tensorflow").data.Dataset.from_tensor_slices((images, truth)), 8, 256))
    keep = probs.max(1) >= 0.9
    assert 0 < keep.sum() < 400, "the threshold should keep some, not all"
    assert rows[2]["kept"] == int(keep.sum())
    assert rows[2]["train_images"] == 200 + rows[2]["kept"]
    assert rows[2]["pseudo_label_accuracy"] == pytest.approx(
        (probs.argmax(1)[keep] == truth[keep]).mean())
    table = (out / "pseudo_label.md").read_text()
    assert f"| 1:2 | 1 | 400 | {rows[2]['kept']} (" in table
    assert f"{rows[2]['test']['accuracy']:.4f}" in table
    assert (out / "pseudo_label.png").exists()
    # killed during the last student: resuming trains that student only
    last = "student-1to2-round1"
    state = json.loads((out / "state.json").read_text())
    state.update(finished=False, completed=[s for s in state["completed"] if s != last])
    (out / "state.json").write_text(json.dumps(state))
    results = json.loads((out / "pseudo_label.json").read_text())
    del results[last]
    (out / "pseudo_label.json").write_text(json.dumps(results))
    (out / f"{last}.keras").unlink()
    mtimes = {p.name: p.stat().st_mtime for p in out.glob("*.keras")}
    again = run_pseudo_labelling(TrainConfig(out=str(out)), resume=True)
    assert again["rows"][:2] == rows[:2] and again["rows"][2]["kept"] == rows[2]["kept"]
    assert {p.name: p.stat().st_mtime for p in out.glob("*.keras") if p.name in mtimes} == mtimes
    assert (out / f"{last}.keras").exists()
    # the teacher and every student are built by the run's builder: its BatchNorm momentum
    assert batchnorm_momenta(*(keras.models.load_model(p) for p in out.glob("*.keras"))) == {0.8}


def test_pseudo_labelling_reads_an_unlabelled_tfds_split(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        result = run_pseudo_labelling(TrainConfig(loss="ce", dataset="stl10", **QUICK),
                                      ratios="1:0.5", threshold=0.05, out=str(tmp_path / "s"),
                                      labelled=10)
    (row,) = result["rows"]
    assert row["unlabelled"] == 5 and row["pseudo_label_accuracy"] is None
    assert row["train_images"] == 10 + row["kept"]


def test_pseudo_labelling_with_center_loss_trains_every_classifier_with_it(tmp_path):
    import keras_supcon.training.build as build_module

    stages, real = [], build_module.center_loss_model

    def recording(classifier, *args, **kwargs):
        stages.append(classifier.name)
        return real(classifier, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_module, "center_loss_model", recording)
        result = run_pseudo_labelling(TrainConfig(loss="center", **QUICK), ratios="1:0.5",
                                      threshold=0.05, out=str(tmp_path / "c"), labelled=100)
    assert len(result["rows"]) == 1
    assert len(stages) == 2  # the teacher and the one student: CE + center loss, not CE alone


# ------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("main, argv, message", [
    (pseudo_main, ["--threshold", "1.5"], "confidence threshold must be in (0, 1]; got 1.5"),
    (pseudo_main, ["--threshold", "0"], "confidence threshold must be in (0, 1]"),
    (pseudo_main, ["--unlabelled", "split"], "digits has no unlabelled split"),
    (pseudo_main, ["--labelled", "1000", "--ratios", "1:1"], "cannot hold out unlabelled"),
    (pseudo_main, ["--ratios", "1:x"], "not a labelled:unlabelled ratio"),
    (pseudo_main, ["--loss", "supcon"], "loss must be ce or center"),
    (pseudo_main, ["--loss", "supcon+ce"], "loss must be ce or center"),
    (train_main, ["--loss", "barlow", "--views", "1"], "exactly two views"),
    (train_main, ["--loss", "center", "--center-alpha", "0"], "alpha must be in (0, 1]"),
    (train_main, ["--probe-hidden", "0"], "probe_hidden must be a positive width"),
    (train_main, ["--probe", "nn", "--probe-refit"], "refits the linear probe on cached"),
    (train_main, ["--loss", "triplet", "--margin", "-1"], "margin must be >= 0"),
    (train_main, ["--loss", "ce", "--clipnorm", "0"], "clipping norm must be > 0"),
])
def test_bad_input_is_one_line(tmp_path, capsys, main, argv, message):
    assert main(argv + ["--out", str(tmp_path / "x"), "--image-size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_center_loss_without_labels_is_refused():
    features = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match="center loss needs the class labels"):
        CenterLoss(2)(features)


def test_readme_method_commands_parse_and_validate():
    import shlex
    from pathlib import Path

    from keras_supcon.cli.layerwise import build_parser as layerwise_parser
    from keras_supcon.cli.pseudo_label import STUDY
    from keras_supcon.cli.pseudo_label import build_parser as pseudo_parser
    from keras_supcon.cli.train import build_parser as train_parser
    from keras_supcon.training import LayerwiseConfig
    from keras_supcon.training.pseudo import check_pseudo_settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Other methods")[1].split("\n## ")[0]
    commands = [shlex.split(line.split("#")[0]) for line in section.splitlines()
                if line.startswith("python -m keras_supcon.")]
    seen = set()
    for command in commands:
        tool, argv = command[2], command[3:]
        seen.add(tool)
        if tool == "keras_supcon.train":
            args = vars(train_parser().parse_args(argv))
            for k in ("resume", "overwrite"):
                args.pop(k)
            TrainConfig(**args).validate()
        elif tool == "keras_supcon.pseudo_label":
            args = vars(pseudo_parser().parse_args(argv))
            study = {k: args.pop(k) for k in STUDY}
            parse_ratios(study.pop("ratios"))
            check_pseudo_settings(**study)
        elif tool == "keras_supcon.layerwise":
            args = vars(layerwise_parser().parse_args(argv))
            LayerwiseConfig(**{k: v for k, v in args.items()
                               if k not in ("config", "resume", "overwrite")}).validate()
    assert {"keras_supcon.train", "keras_supcon.pseudo_label", "keras_supcon.layerwise"} <= seen
