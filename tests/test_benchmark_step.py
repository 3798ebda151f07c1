"""Smoke tests of benchmarks.train_step and benchmarks.input_pipeline (no timing assertions)."""

import json

import numpy as np
import pytest

from benchmarks import input_pipeline, train_step


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, cifar_tiny):
    """Both benchmarks in --quick mode into one results folder (train_step first), on the
    committed CIFAR-10 fixture (the benchmarks' default is the shared subset)."""
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--results-dir", str(out), "--dataset", str(cifar_tiny)]
    step = train_step.main(args)
    pipe = input_pipeline.main(args)
    return out, step, pipe


def test_train_step_quick_writes_positive_rates(quick_results):
    out, data, _ = quick_results
    on_disk = json.loads((out / "train_step.json").read_text())
    assert on_disk["name"] == "train_step" and "--quick" in on_disk["command"]
    res = on_disk["results"]
    (run,) = res["runs"]
    assert run["backbone"] == "small_resnet" and run["variant"] == "graph"
    for impl in ("ours", "tutorial"):
        assert run[impl]["view_images_per_s"] > 0
        assert run[impl]["source_images_per_s"] == pytest.approx(
            run[impl]["view_images_per_s"] / 2, rel=1e-3)
        assert run[impl]["steps"] == 2
    assert run["ratio"] > 0
    assert res["max_step_view_images_per_s"] > 0
    assert res["keras_policy_after"] == "float32"
    md = train_step.markdown(on_disk)
    assert "small_resnet" in md and "ours / tutorial" in md and "RandomColorJitter" in md
    assert train_step.markdown(data) == md


def test_input_pipeline_quick_reads_the_step_rate(quick_results, tmp_path):
    out, step, data = quick_results
    res = json.loads((out / "input_pipeline.json").read_text())["results"]
    names = [r["name"] for r in res["rows"]]
    assert "library" in names and "per-image" in names and "batched, resize first" in names
    for r in res["rows"]:
        assert r["view_images_per_s"] > 0 and r["first_batch_s"] > 0
        assert r["batch_shape"] == [64, 2, 32, 32, 3]
        assert r["pipeline_over_step"] > 0
    assert res["max_step_view_images_per_s"] == step["results"]["max_step_view_images_per_s"]
    md = input_pipeline.markdown(data)
    assert "`library`" in md and "Fastest training step" in md
    # without train_step.json the markdown says so
    assert input_pipeline.read_step(tmp_path)[0] is None
    alone = dict(data, results=dict(data["results"], max_step_view_images_per_s=None,
                                    max_step=input_pipeline.read_step(tmp_path)[1]))
    for r in alone["results"]["rows"]:
        r["pipeline_over_step"] = None
    assert "train_step.json absent" in input_pipeline.markdown(alone)


@pytest.mark.parametrize("batch,classes", [(8, 3), (16, 16)])
def test_tutorial_loss_is_npairs_loss(batch, classes):
    import tensorflow as tf

    from keras_supcon.losses import NPairsLoss

    rng = np.random.default_rng(batch)
    z = rng.normal(size=(batch, 2, 8)).astype("float32")  # [B, V, D]
    labels = rng.integers(0, classes, size=batch)
    ours = float(NPairsLoss(temperature=0.05)(labels, z))
    # the tutorial model concatenates the views along the batch (view-major)
    concat = tf.concat([z[:, 0], z[:, 1]], axis=0)
    tutorial = float(train_step.make_tutorial_loss(temperature=0.05)(labels, concat))
    assert tutorial == pytest.approx(ours, rel=1e-5, abs=1e-5)
    # and tfa's npairs body on a plain [N, N] logits matrix
    logits = rng.normal(size=(batch, batch)).astype("float32")
    from keras_supcon.losses import npairs_loss

    assert float(train_step.tfa_npairs_loss(labels, logits)) == pytest.approx(
        float(npairs_loss(labels, logits)), rel=1e-5, abs=1e-6)
