"""The ablation end to end: a 2 x 2 grid (small_resnet, pixels) x (ce, supcon) on
digits, with one combination crashing on the first attempt; the tables against
the runs' metrics.json, the embedding metrics against a brute-force computation
from the saved encoder, the report command, and the errors."""

import csv
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_supcon.training.job as job_module
from keras_supcon.cli.ablation import main as ablation_main
from keras_supcon.cli.report import main as report_main
from keras_supcon.data import load_dataset, supervised_batches
from keras_supcon.errors import ConfigError, RunDirError
from keras_supcon.evaluation import predict
from keras_supcon.evaluation.report import collect_runs, write_report
from keras_supcon.training.ablation import parse_grid, plan, run_ablation
from keras_supcon.training.probe import C_GRID

# Digits are 8x8 images: at 8 pixels the two backbones see the data as it is, at the least
# cost. The second backbone is the raw pixels (no convolution: the cheapest run that still
# has an encoder, embeddings and a probe): the ablation's machinery is under test here.
SIZE = 8
OTHER = "pixels"
BUDGET = ["--dataset", "digits", "--image-size", str(SIZE), "--epochs", "1", "--linear-epochs", "1",
          "--batch-size", "64", "--precise-bn-batches", "4", "--verbose", "0"]
NAMES = ["small_resnet-ce", "small_resnet-supcon", f"{OTHER}-ce", f"{OTHER}-supcon"]
CRASHING = "small_resnet-supcon"


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """Run the ablation twice: first with CRASHING failing after its training
    stages, then again (which must only resume CRASHING)."""
    out = tmp_path_factory.mktemp("ablation") / "abl"
    argv = ["--backbones", f"small_resnet,{OTHER}", "--losses", "ce,supcon", "--out", str(out),
            *BUDGET]
    real_evaluate = job_module.evaluate_run

    def crashing_evaluate(config, *args, **kwargs):
        if config.backbone == "small_resnet" and config.loss == "supcon":
            raise RuntimeError("deliberate crash")
        return real_evaluate(config, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job_module, "evaluate_run", crashing_evaluate)
        first_rc = ablation_main(argv)
    first = {
        "rc": first_rc,
        "book": json.loads((out / "ablation.json").read_text()),
        "md": (out / "ablation.md").read_text(),
        "error_file": (out / "errors" / f"{CRASHING}.txt").read_text(),
        "mtimes": {n: (out / n / "metrics.json").stat().st_mtime_ns
                   for n in NAMES if n != CRASHING},
    }
    second_rc = ablation_main(argv)
    return out, first, second_rc


def test_failed_combination_is_reported_and_the_others_finish(ablation):
    out, first, _ = ablation
    assert first["rc"] == 1
    status = {c["name"]: c["status"] for c in first["book"]["combinations"]}
    assert status == {**{n: "finished" for n in NAMES}, CRASHING: "failed"}
    failed = next(c for c in first["book"]["combinations"] if c["name"] == CRASHING)
    assert failed["error"] == "RuntimeError: deliberate crash"
    assert "deliberate crash" in first["error_file"] and "Traceback" in first["error_file"]
    assert "| small_resnet | failed: RuntimeError: deliberate crash |" in first["md"]
    assert "3 of 4 runs finished" in first["md"]


def test_second_attempt_only_resumes_the_failed_combination(ablation):
    out, first, second_rc = ablation
    assert second_rc == 0
    book = json.loads((out / "ablation.json").read_text())
    status = {c["name"]: c["status"] for c in book["combinations"]}
    assert status == {**{n: "skipped" for n in NAMES}, CRASHING: "finished"}
    for name, mtime in first["mtimes"].items():  # finished runs were not touched
        assert (out / name / "metrics.json").stat().st_mtime_ns == mtime
    # resumed after its completed stages: each stage trained once, not again
    history = list(csv.DictReader((out / CRASHING / "history.csv").open()))
    assert [(r["stage"], r["epoch"]) for r in history] == [("pretrain", "1")] + [
        ("linear", str(i)) for i in range(1, len(C_GRID) + 1)]
    assert not (out / "errors" / f"{CRASHING}.txt").exists()
    assert "4 of 4 runs finished" in (out / "ablation.md").read_text()


def _md_tables(text):
    """``{heading: [row dicts]}`` of the markdown tables under ``###``/``##`` headings."""
    tables, heading, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                tables[heading] = []
            else:
                tables[heading].append(dict(zip(header, cells)))
    return tables


def test_tables_equal_the_runs_metrics(ablation):
    out, _, _ = ablation
    metrics = {n: json.loads((out / n / "metrics.json").read_text()) for n in NAMES}
    tables = _md_tables((out / "ablation.md").read_text())
    for loss in ("ce", "supcon"):
        rows = {r["Backbone"]: r for r in tables[loss]}
        assert set(rows) == {"small_resnet", OTHER}
        for backbone, row in rows.items():
            m = metrics[f"{backbone}-{loss}"]
            assert row["F1"] == f"{m['f1_macro']:.4f}"
            assert row["Accuracy"] == f"{m['accuracy']:.4f}"
            assert row["Precision"] == f"{m['precision_macro']:.4f}"
            assert row["Recall"] == f"{m['recall_macro']:.4f}"
    emb_rows = {(r["Backbone"], r["Loss"]): r
                for r in tables["Embedding quality (encoder output, cosine similarity)"]}
    for name in NAMES:
        backbone, loss = name.rsplit("-", 1)
        e = metrics[name]["embedding"]
        row = emb_rows[(backbone, loss)]
        assert row["kNN acc."] == f"{e['knn_accuracy']:.4f}"
        assert row["MAP@R"] == f"{e['map_at_r']:.4f}"
        assert row["R@8"] == f"{e['recall_at_k']['8']:.4f}"
        pair, n = e["classifier_vs_knn"], metrics[name]["num_examples"]
        assert pair["classifier_only"] - pair["knn_only"] == round(
            (metrics[name]["accuracy"] - e["knn_accuracy"]) * n)
        assert 0 < pair["mcnemar_p"] <= 1
    diff = {r["Backbone"]: r for r in tables["supcon vs ce"]}
    for backbone in ("small_resnet", OTHER):
        a, b = (metrics[f"{backbone}-{loss}"]["accuracy"] for loss in ("ce", "supcon"))
        assert diff[backbone]["Accuracy"] == f"{a:.4f} → {b:.4f} ({b - a:+.4f})"
    with (out / "ablation.csv").open() as f:
        csv_rows = {r["run"]: r for r in csv.DictReader(f)}
    for name in NAMES:  # the CSV keeps full precision
        for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
            assert float(csv_rows[name][key]) == metrics[name][key]
        assert float(csv_rows[name]["knn_accuracy"]) == metrics[name]["embedding"]["knn_accuracy"]
        assert csv_rows[name]["status"] == "finished"
    for png in ("ablation_bars.png", "ablation_curves.png"):
        assert (out / png).stat().st_size > 10_000
    assert not list(out.glob("ablation_sweep_*.png"))  # nothing swept here


def test_only_settings_varied_within_a_backbone_and_loss_are_sweeps():
    from keras_supcon.evaluation.report import RunResult, swept_settings, varying_settings

    def run(backbone, loss, **s):
        return RunResult(Path(f"{backbone}-{loss}-{s}"), dict(backbone=backbone, loss=loss, **s),
                         {"accuracy": 0.5})

    runs = [run("resnet50", "ce", image_size=32), run("inceptionv3", "ce", image_size=75),
            run("resnet50", "supcon", image_size=32, temperature=0.1)]
    assert varying_settings(runs) == ["image_size"]  # a temperature does not apply to ce
    assert swept_settings(runs, ["image_size"]) == []
    runs += [run("resnet50", "supcon", image_size=32, temperature=0.5)]
    assert varying_settings(runs) == ["image_size", "temperature"]
    assert swept_settings(runs, ["image_size", "temperature"]) == ["temperature"]


def _brute_force(train_emb, train_y, test_emb, test_y, k):
    """Per-query loops over Euclidean distances of unit vectors (same order as cosine)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    train_emb, test_emb = unit(train_emb.astype(np.float64)), unit(test_emb.astype(np.float64))
    knn_correct = 0
    for q, y in zip(test_emb, test_y):
        d = np.linalg.norm(train_emb - q, axis=1)
        nearest = np.argsort(d, kind="stable")[:k]
        counts = np.bincount(train_y[nearest], minlength=10)
        tied = np.flatnonzero(counts == counts.max())
        # the closer class: larger summed cosine similarity, 1 - d^2 / 2 for unit vectors
        closeness = [(1 - d[nearest][train_y[nearest] == c] ** 2 / 2).sum() for c in tied]
        knn_correct += tied[int(np.argmax(closeness))] == y
    p1, r8, aps = 0, 0, []
    for i, (q, y) in enumerate(zip(test_emb, test_y)):
        others = np.delete(np.arange(len(test_emb)), i)
        d = np.linalg.norm(test_emb[others] - q, axis=1)
        rel = test_y[others][np.argsort(d, kind="stable")] == y
        p1 += rel[0]
        r8 += rel[:8].any()
        r = int(rel.sum())
        if r:
            aps.append(sum(rel[:j + 1].sum() / (j + 1) for j in range(r) if rel[j]) / r)
    n = len(test_emb)
    return knn_correct / n, p1 / n, r8 / n, float(np.mean(aps))


@pytest.mark.parametrize("name", [f"{OTHER}-ce", "small_resnet-supcon"])
def test_embedding_metrics_match_brute_force(ablation, name):
    out, _, _ = ablation
    embedding = json.loads((out / name / "metrics.json").read_text())["embedding"]
    encoder = keras.models.load_model(out / name / "encoder.keras")
    data = load_dataset("digits")
    train_emb, train_y = predict(encoder, supervised_batches(data.train, SIZE, 256))
    test_emb, test_y = predict(encoder, supervised_batches(data.test, SIZE, 256))
    knn, p1, r8, map_r = _brute_force(train_emb, train_y, test_emb, test_y, embedding["knn_k"])
    assert embedding["knn_k"] == 20
    assert embedding["knn_accuracy"] == pytest.approx(knn, abs=1e-9)
    assert embedding["precision_at_1"] == pytest.approx(p1, abs=1e-9)
    assert embedding["recall_at_k"]["8"] == pytest.approx(r8, abs=1e-9)
    assert embedding["map_at_r"] == pytest.approx(map_r, abs=1e-9)
    assert -1 <= embedding["silhouette"] <= 1


def test_report_command_reproduces_the_ablation_tables(ablation, capsys):
    out, _, _ = ablation
    assert report_main([str(out), "--name", "page", "--title", "Ablation"]) == 0
    assert "report:" in capsys.readouterr().out
    # same tables and CSV; rows in folder order there, in combination order here
    page, abl = ({heading: sorted(tuple(sorted(row.items())) for row in rows)
                  for heading, rows in _md_tables((out / f"{n}.md").read_text()).items()}
                 for n in ("page", "ablation"))
    assert page == abl
    assert (sorted((out / "page.csv").read_text().splitlines()) ==
            sorted((out / "ablation.csv").read_text().splitlines()))


def test_rerun_with_other_settings_is_refused(ablation):
    out, _, _ = ablation
    same = dict(dataset="digits", image_size=SIZE, linear_epochs=1, batch_size=64,
                precise_bn_batches=4, verbose=0)
    with pytest.raises(ConfigError, match=r"epochs: 1 there, 2 now"):
        run_ablation(out, "small_resnet", "ce", epochs=2, **same)


def test_second_ablation_in_the_same_folder_shares_its_runs(ablation):
    """A temperature means nothing to ce: another study with one reuses the ce run."""
    out, _, _ = ablation
    before = (out / f"{OTHER}-ce" / "metrics.json").stat().st_mtime_ns
    result = run_ablation(out, OTHER, "ce", name="other", temperature=0.05, epochs=1,
                          dataset="digits", image_size=SIZE, linear_epochs=1, batch_size=64,
                          precise_bn_batches=4, verbose=0)
    assert [c["status"] for c in result["combinations"]] == ["skipped"]
    assert (out / "other.md").exists() and (out / "other.json").exists()
    assert "1 of 1 runs finished" in (out / "other.md").read_text()
    assert (out / f"{OTHER}-ce" / "metrics.json").stat().st_mtime_ns == before


def test_report_errors_name_the_offending_item(ablation, tmp_path):
    out, _, _ = ablation
    with pytest.raises(RunDirError, match="no run directories"):
        collect_runs(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"settings": {"loss": "ce"}}))
    with pytest.raises(RunDirError, match="1 run directories, none finished"):
        collect_runs(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out / f"{OTHER}-ce", broken)
    (broken / "metrics.json").write_text('{"accuracy": 0.5,')
    with pytest.raises(RunDirError, match=re.escape(str(broken / "metrics.json")) +
                       " is not valid JSON"):
        write_report(tmp_path)
    (broken / "metrics.json").unlink()
    with pytest.raises(RunDirError, match=re.escape(str(broken / "metrics.json")) +
                       " is missing"):
        write_report(tmp_path)
    (broken / "metrics.json").write_text('{"accuracy": 0.5}')
    with pytest.raises(RunDirError, match="lacks f1_macro, precision_macro, recall_macro"):
        write_report(tmp_path)


@pytest.mark.parametrize("backbones,losses,grid,message", [
    ("small_resnet,vgg", "ce", None, "--backbones: unknown name 'vgg'"),
    ("small_resnet", "ce,arcface", None, "--losses: unknown name 'arcface'"),
    ("", "ce", None, "--backbones is empty"),
    ("small_resnet", " , ", None, "--losses is empty"),
    ("small_resnet,small_resnet", "ce", None, "small_resnet given more than once"),
    ("small_resnet", "ce,supcon", ["temperature=0.05,0.1"], "does not change ce runs"),
    ("small_resnet", "supcon", ["colour=1,2"], "'colour' is not a setting"),
    ("small_resnet", "supcon", ["temperature=0.1,hot"], "values must be float"),
    ("small_resnet", "supcon", ["temperature"], "expects NAME=V1,V2"),
    ("small_resnet", "supcon", ["temperature=-1,0.1"], "supcon-temperature-1: temperature "
                                                        "must be > 0"),
    ("inceptionv3", "ce", None, "inceptionv3-ce: image size 32 is below"),
])
def test_bad_ablation_lists(backbones, losses, grid, message):
    settings = {"image_size": 32} if "inception" in backbones else {}
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan(backbones, losses, grid, settings)


def test_grid_names_runs_and_types_values():
    combos, configs = plan("small_resnet", "supcon,npairs",
                           ["temperature=0.05,0.5", "batch_size=32,64"], out="x")
    assert [c.name for c in combos][:3] == ["small_resnet-supcon-temperature0.05-batchsize32",
                                            "small_resnet-supcon-temperature0.05-batchsize64",
                                            "small_resnet-supcon-temperature0.5-batchsize32"]
    assert len(configs) == 8 and configs[1].batch_size == 64 and configs[1].temperature == 0.05
    assert parse_grid({"batch-size": [32, "64"]}) == {"batch_size": [32, 64]}


def test_grid_values_are_parsed_by_the_settings_declared_type():
    # augmentation defaults to None: its values are the policies' names, not floats
    assert parse_grid(["augmentation=simclr,digits", "flip=true,false", "image-size=8,16"]) == {
        "augmentation": ["simclr", "digits"], "flip": [True, False], "image_size": [8, 16]}
    with pytest.raises(ConfigError, match="unknown augmentation 'nope'"):
        parse_grid(["augmentation=simclr,nope"])
    with pytest.raises(ConfigError, match="--grid flip: values must be bool"):
        parse_grid(["flip=true,maybe"])


def test_grid_of_augmentation_policies_runs(tmp_path):
    out = tmp_path / "abl"
    assert ablation_main(["--backbones", "pixels", "--losses", "ce", "--grid",
                          "augmentation=simclr,digits", "--out", str(out), "--image-size", "8",
                          "--epochs", "1", "--batch-size", "64", "--verbose", "0"]) == 0
    policies = sorted(json.loads(p.read_text())["augmentation"]["name"]
                      for p in out.glob("*/config.json"))
    assert policies == ["digits", "simclr"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert ablation_main(["--backbones", "resnet50,nope", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    from keras_supcon.models import BACKBONES

    assert err == [f"error: --backbones: unknown name 'nope'; choose from: {', '.join(BACKBONES)}"]
    assert "resnet18_cifar, vgg16bn" in err[0]
    config = tmp_path / "c.toml"
    config.write_text('backbones = ["small_resnet"]\nbatchsize = 3\n')
    with pytest.raises(SystemExit) as exc:
        ablation_main(["--config", str(config)])
    assert exc.value.code == 2
    assert "unknown setting(s) batchsize" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'} is not a directory"
    assert ablation_main(["--name", "../x", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == "error: --name must be a plain file name; got '../x'"
    assert report_main([str(tmp_path), "--name", "/tmp/x"]) == 2
    assert "report name must be a plain file name" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] /
                                          "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_experiment_configs_are_valid(config):
    from keras_supcon.cli.ablation import parse_args

    text = config.read_text()
    if "python -m keras_supcon.pseudo_label --config" in text:
        return _check_pseudo_label_config(config)
    out, backbones, losses, grid, settings = parse_args(["--config", str(config)])
    name, title = settings.pop("name"), settings.pop("title")
    combos, configs = plan(backbones, losses, grid, settings, out)
    assert out.startswith("runs/") and title and name and combos
    assert f"python -m keras_supcon.ablation --config experiments/{config.name}" in text
    if "cpu" in config.name:
        assert all(c.dataset == "../shared/data/cifar10_subset.npz" for c in configs)


def _check_pseudo_label_config(config):
    from keras_supcon.cli.common import apply_config_file
    from keras_supcon.cli.pseudo_label import STUDY, build_parser
    from keras_supcon.training.pseudo import check_pseudo_settings, parse_ratios
    from keras_supcon.training.settings import TrainConfig

    parser = build_parser()
    apply_config_file(parser, ["--config", str(config)])
    args = vars(parser.parse_args(["--config", str(config)]))
    study = {k: args.pop(k) for k in STUDY}
    parse_ratios(study.pop("ratios"))
    check_pseudo_settings(**study)
    for k in ("config", "resume", "overwrite"):
        args.pop(k)
    settings = TrainConfig(**args).validate()
    assert settings.out.startswith("runs/") and settings.loss == "ce"
    assert settings.dataset == "../shared/data/cifar10_subset.npz"


def test_readme_ablation_commands_parse_and_plan():
    import shlex

    from keras_supcon.cli.ablation import parse_args

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [c.split("#")[0] for c in readme.replace("\\\n", " ").splitlines()
                if c.startswith("python -m keras_supcon.ablation")]
    assert len(commands) >= 2
    for command in commands:
        out, backbones, losses, grid, settings = parse_args(shlex.split(command)[3:])
        settings.pop("name"), settings.pop("title")
        assert plan(backbones, losses, grid, settings, out)[0]
