"""Pruning pieces: layer choice, magnitude masks, fixed masks, schedules, allocation, tfmot."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_supcon.compression.masks import fixed_masks, magnitude_masks
from keras_supcon.compression.prune import (
    kernels,
    parse_m_by_n,
    prunable_layers,
    prune_classifier,
    pruning_schedule,
    sparsity_table,
)
from keras_supcon.compression.sensitivity import allocate_sparsity, layer_sensitivity
from keras_supcon.errors import ConfigError
from keras_supcon.models import build_classifier, build_encoder

SMALL_LAYERS = ["stage1_conv1", "stage1_conv2", "stage2_conv1", "stage2_conv2", "stage2_proj",
                "stage3_conv1", "stage3_conv2", "stage3_proj", "probabilities"]


def _classifier(size=12, classes=4):
    keras.utils.set_random_seed(0)
    return build_classifier(build_encoder("small_resnet", size), classes)


def _data(n=64, size=12, classes=4, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = rng.integers(0, classes, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_prunable_layers_default_skips_the_first_conv():
    model = _classifier()
    assert prunable_layers(model) == SMALL_LAYERS
    assert prunable_layers(model, include_first_conv=True) == ["stem_conv"] + SMALL_LAYERS
    assert prunable_layers(model, layers=["probabilities", "stem_conv"]) == [
        "stem_conv", "probabilities"]


@pytest.mark.parametrize("layers, message", [
    (["nope"], "no layer named 'nope'"),
    (["stem_bn"], r"'stem_bn' \(BatchNormalization\) cannot be pruned"),
])
def test_bad_layer_choice_names_the_layer(layers, message):
    with pytest.raises(ConfigError, match=message):
        prunable_layers(_classifier(), layers=layers)


@pytest.mark.parametrize("text, expected", [("2:4", (2, 4)), ("1:8", (1, 8)), (None, None)])
def test_parse_m_by_n(text, expected):
    assert parse_m_by_n(text) == expected


@pytest.mark.parametrize("text", ["4:4", "0:4", "5:4", "2-4", "a:b"])
def test_parse_m_by_n_refuses_patterns_that_do_not_fit(text):
    with pytest.raises(ConfigError, match="m-by-n"):
        parse_m_by_n(text)


def _reference_keep(values, sparsity):
    """Plain loop: prune the k smallest |w| (first by position among equals)."""
    flat = [abs(float(v)) for v in np.ravel(values)]
    k = int(round(sparsity * len(flat)))
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))
    keep = [True] * len(flat)
    for i in order[:k]:
        keep[i] = False
    return np.array(keep)


@pytest.mark.parametrize("sparsity, seed", itertools.product([0.0, 0.3, 0.5, 0.9], [0, 1]))
def test_magnitude_masks_against_a_plain_loop(sparsity, seed):
    rng = np.random.default_rng(seed)
    weights = {"a": rng.standard_normal((3, 3, 4, 5)), "b": rng.standard_normal((7, 3)) * 5,
               "c": np.round(rng.standard_normal(11), 1)}  # ties
    per_layer = magnitude_masks(weights, sparsity, scope="layer")
    for name, w in weights.items():
        np.testing.assert_array_equal(per_layer[name].ravel(), _reference_keep(w, sparsity))
        assert per_layer[name].shape == w.shape
    glob = magnitude_masks(weights, sparsity, scope="global")
    flat = np.concatenate([w.ravel() for w in weights.values()])
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in glob.values()]),
                                  _reference_keep(flat, sparsity))
    mixed = magnitude_masks(weights, {"a": 0.1, "b": 0.6, "c": 0.0})
    assert [int((~m).sum()) for m in mixed.values()] == [
        round(0.1 * 180), round(0.6 * 21), 0]


def test_fixed_masks_keep_pruned_weights_at_zero_through_training():
    model = _classifier()
    names = prunable_layers(model)
    values = {n: keras.ops.convert_to_numpy(v) for n, v in kernels(model, names).items()}
    masks = magnitude_masks(values, 0.6)
    model.compile("adam", "sparse_categorical_crossentropy")
    with fixed_masks(model, masks):
        model.fit(_data(), epochs=2, verbose=0)
    table = sparsity_table(model, names)
    for name in names:
        w = keras.ops.convert_to_numpy(kernels(model, [name])[name])
        assert np.all(w[~masks[name]] == 0)
        assert np.all(w[masks[name]] != 0)
        assert table["layers"][name]["nonzero"] == masks[name].sum()
    assert all(v.constraint is None for v in kernels(model, names).values())


@pytest.mark.parametrize("total_steps", [1, 7, 40, 1000])
@pytest.mark.parametrize("kind", ["constant", "polynomial"])
def test_schedule_reaches_the_target_before_the_end(kind, total_steps):
    schedule = pruning_schedule(kind, 0.6, total_steps)
    end = schedule.get_config()["config"]["end_step"]
    assert 1 <= end <= total_steps
    should_prune, sparsity = schedule(tf.constant(end, tf.int64))
    assert bool(should_prune) and float(sparsity) == pytest.approx(0.6)


def test_allocation_lands_on_the_target_and_prunes_insensitive_layers_first():
    rates = (0.25, 0.5, 0.75, 0.9)
    drops = {"robust": [0.0, 0.0, 0.01, 0.02], "fragile": [0.05, 0.2, 0.4, 0.6],
             "middle": [0.0, 0.02, 0.1, 0.3]}
    sizes = {"robust": 1000, "fragile": 1000, "middle": 2000}
    for target in (0.2, 0.5, 0.7):
        s = allocate_sparsity(drops, sizes, target, rates)
        assert sum(s[n] * sizes[n] for n in s) / sum(sizes.values()) == pytest.approx(target)
        assert s["robust"] >= s["middle"] >= s["fragile"]
    with pytest.raises(ConfigError, match="above the largest"):
        allocate_sparsity(drops, sizes, 0.95, rates)


def test_allocation_is_no_worse_than_any_grid_choice():
    """Brute force over the measured rates: the greedy choice's predicted drop is at most
    that of every per-layer choice reaching the target (drops here are convex)."""
    rates = (0.25, 0.5, 0.75)
    drops = {"a": [0.01, 0.03, 0.08], "b": [0.0, 0.02, 0.09], "c": [0.02, 0.05, 0.11]}
    sizes = {"a": 100, "b": 300, "c": 200}
    target = 0.5
    s = allocate_sparsity(drops, sizes, target, rates)

    def drop(choice):
        levels = [0.0, *rates]
        return sum(np.interp(choice[n], levels, [0.0, *drops[n]]) for n in drops)

    best = min(drop(dict(zip(drops, combo)))
               for combo in itertools.product([0.0, *rates], repeat=3)
               if sum(c * sizes[n] for n, c in zip(drops, combo)) >= target * 600 - 1e-9)
    assert drop(s) <= best + 1e-12


def test_layer_sensitivity_restores_the_weights():
    model = _classifier()
    before = [w.copy() for w in model.get_weights()]
    base, drops = layer_sensitivity(model, ["stage3_conv2", "probabilities"], _data(),
                                    rates=(0.5, 0.99))
    assert 0 <= base <= 1 and set(drops) == {"stage3_conv2", "probabilities"}
    assert all(len(d) == 2 for d in drops.values())
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_prune_classifier_zeroes_half_of_every_chosen_kernel(monkeypatch):
    import tf_keras

    traces, step = [], tf_keras.Model.train_step
    monkeypatch.setattr(tf_keras.Model, "train_step",
                        lambda self, data: traces.append(1) or step(self, data))
    model = _classifier()
    result = prune_classifier(model, _data(), sparsity=0.5, epochs=2, verbose=0)
    # the twin's fine-tuning step is traced once (its variables built before fit: tf_keras
    # alone traces it twice)
    assert len(traces) == 1
    assert isinstance(result.model, keras.Model)
    table = sparsity_table(result.model, SMALL_LAYERS)
    for name, row in table["layers"].items():
        assert row["sparsity"] == pytest.approx(0.5, abs=1e-3), name
    assert table["total"]["sparsity"] >= 0.5
    assert sparsity_table(result.model, ["stem_conv"])["total"]["sparsity"] == 0
    assert set(result.history) >= {"loss", "accuracy"}


def test_prune_classifier_m_by_n_and_layers_that_do_not_fit():
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_utils import (
        is_pruned_m_by_n,
    )

    model = _classifier()
    result = prune_classifier(model, _data(), m_by_n=(2, 4), epochs=1, verbose=0,
                              include_first_conv=True, schedule="polynomial")
    assert set(result.left_dense) == {"stem_conv"}  # 3 input channels
    assert "not a multiple of 4" in result.left_dense["stem_conv"]
    for name, kernel in kernels(result.model, SMALL_LAYERS).items():
        assert bool(is_pruned_m_by_n(tf.constant(keras.ops.convert_to_numpy(kernel)))), name
    assert sparsity_table(result.model, ["stem_conv"])["total"]["sparsity"] == 0


def test_prune_classifier_per_layer_targets_and_bad_sparsity():
    model = _classifier()
    result = prune_classifier(model, _data(), layer_sparsity={"stage3_conv2": 0.8,
                                                              "probabilities": 0.0},
                              epochs=1, verbose=0)
    table = sparsity_table(result.model, SMALL_LAYERS)["layers"]
    assert table["stage3_conv2"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert table["probabilities"]["sparsity"] == 0 and table["stage1_conv1"]["sparsity"] == 0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
            prune_classifier(model, _data(), sparsity=bad, epochs=1)
