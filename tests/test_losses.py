"""SupCon, SimCLR and npairs against plain-loop float64 references.

The references are written from the formulas with Python loops over anchors;
gradients are checked against central finite differences of the references.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from roundtrip import assert_loss_round_trip
from tolerances import F32

from keras_supcon.losses import NPairsLoss, SimCLRLoss, SupConLoss, npairs_loss, supcon_loss


# ----------------------------------------------------------------- references
def _normalise(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def ref_supcon(features, labels, temperature, variant):
    """Plain loops over anchors; features [B, V, D]; labels None = SimCLR."""
    B, V, _ = features.shape
    anchors, anchor_labels = [], []
    for b in range(B):
        for v in range(V):
            anchors.append(_normalise(list(features[b, v])))
            anchor_labels.append(b if labels is None else int(labels[b]))
    n = len(anchors)
    s = [[sum(p * q for p, q in zip(anchors[i], anchors[a])) / temperature
          for a in range(n)] for i in range(n)]
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and anchor_labels[p] == anchor_labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(s[i][a]) for a in range(n) if a != i)
        if variant == "out":
            li = -sum(math.log(math.exp(s[i][p]) / denom) for p in positives) / len(positives)
        else:
            li = -math.log(sum(math.exp(s[i][p]) for p in positives) / len(positives) / denom)
        losses.append(li)
    return sum(losses) / len(losses) if losses else 0.0


def ref_npairs(labels, sim):
    B = len(labels)
    total = 0.0
    for i in range(B):
        same = [j for j in range(B) if labels[j] == labels[i]]
        lse = math.log(sum(math.exp(sim[i][j]) for j in range(B)))
        total += sum(-(1.0 / len(same)) * (sim[i][j] - lse) for j in same)
    return total / B


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


def tf_value_and_grad(fn, x):
    x = tf.constant(x, dtype=tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return float(y), tape.gradient(y, x).numpy()


LABEL_PATTERNS = {
    "mixed": lambda b, rng: rng.integers(0, 3, size=b),
    "all_distinct": lambda b, rng: np.arange(b),
    "one_class": lambda b, rng: np.zeros(b, dtype=int),
    "singletons": lambda b, rng: np.array([0, 0, 1, 2, 3, 4][:b] if b <= 6 else
                                          [0, 0] + list(range(1, b - 1))),
}


# ----------------------------------------------------------------- supcon
@pytest.mark.parametrize("shape", [(6, 2, 4), (5, 3, 3), (8, 1, 5), (4, 2, 16)])
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_reference(shape, pattern, variant, temperature):
    rng = np.random.default_rng(hash((shape, pattern, variant, temperature)) % 2**32)
    feats = rng.normal(size=shape)
    labels = LABEL_PATTERNS[pattern](shape[0], rng)

    def ours(x):
        return supcon_loss(x, tf.constant(labels), temperature=temperature, variant=variant)

    value, grad = tf_value_and_grad(ours, feats)
    expected = ref_supcon(feats, labels, temperature, variant)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-12)
    expected_grad = numeric_grad(lambda x: ref_supcon(x, labels, temperature, variant), feats)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(6, 2, 4), (3, 4, 5)])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_simclr_matches_reference(shape, temperature):
    rng = np.random.default_rng(7)
    feats = rng.normal(size=shape)
    value, grad = tf_value_and_grad(
        lambda x: supcon_loss(x, None, temperature=temperature), feats)
    np.testing.assert_allclose(value, ref_supcon(feats, None, temperature, "out"), **F32)
    expected_grad = numeric_grad(lambda x: ref_supcon(x, None, temperature, "out"), feats)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_supcon_2d_input_is_one_view():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(7, 6))
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    got = float(supcon_loss(tf.constant(feats), tf.constant(labels), temperature=0.2))
    np.testing.assert_allclose(got, ref_supcon(feats[:, None], labels, 0.2, "out"), **F32)


def test_supcon_without_any_positive_is_zero_with_zero_gradient():
    feats = tf.constant(np.random.default_rng(2).normal(size=(5, 1, 4)))
    with tf.GradientTape() as tape:
        tape.watch(feats)
        loss = supcon_loss(feats, tf.constant([0, 1, 2, 3, 4]))
    grad = tape.gradient(loss, feats).numpy()
    assert float(loss) == 0.0
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_supcon_stays_finite_at_low_temperature_float32():
    rng = np.random.default_rng(3)
    feats = tf.constant(rng.normal(size=(16, 2, 8)).astype("float32"))
    labels = tf.constant(rng.integers(0, 4, size=16))
    with tf.GradientTape() as tape:
        tape.watch(feats)
        loss = supcon_loss(feats, labels, temperature=0.005)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(tape.gradient(loss, feats).numpy()))


def test_supcon_float32_close_to_float64():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(32, 2, 16))
    labels = rng.integers(0, 5, size=32)
    f64 = float(supcon_loss(feats, labels))
    f32 = float(supcon_loss(feats.astype("float32"), labels))
    assert abs(f32 - f64) / f64 < 1e-5


def test_supcon_rejects_bad_arguments():
    feats = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(feats, [0, 1, 2, 3], temperature=0.0)
    with pytest.raises(ValueError, match="variant"):
        supcon_loss(feats, [0, 1, 2, 3], variant="sideways")
    with pytest.raises(ValueError, match="2 views"):
        supcon_loss(np.zeros((4, 3)), None)
    with pytest.raises(ValueError, match="rank"):
        supcon_loss(np.zeros((4, 2, 3, 1)), [0, 1, 2, 3])


# ----------------------------------------------------------------- npairs
@pytest.mark.parametrize("batch", [2, 5, 9])
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
def test_npairs_matches_reference(batch, pattern):
    rng = np.random.default_rng(batch * 31 + len(pattern))
    sim = rng.normal(scale=3.0, size=(batch, batch))
    labels = LABEL_PATTERNS[pattern](batch, rng)
    value, grad = tf_value_and_grad(lambda s: npairs_loss(tf.constant(labels), s), sim)
    np.testing.assert_allclose(value, ref_npairs(labels, sim.tolist()), **F32)
    expected_grad = numeric_grad(lambda s: ref_npairs(labels, s.tolist()), sim)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("shape", [(6, 4), (4, 2, 3)])
@pytest.mark.parametrize("temperature", [0.05, 0.3])
def test_npairs_loss_class_builds_tutorial_similarity(shape, temperature):
    rng = np.random.default_rng(5)
    emb = rng.normal(size=shape)
    labels = rng.integers(0, 2, size=shape[0])

    def reference(e):
        rows = e.reshape(-1, shape[-1])
        lab = np.repeat(labels, 1 if len(shape) == 2 else shape[1])
        z = [_normalise(list(r)) for r in rows]
        sim = [[sum(p * q for p, q in zip(a, b)) / temperature for b in z] for a in z]
        return ref_npairs(lab, sim)

    loss = NPairsLoss(temperature=temperature)
    value, grad = tf_value_and_grad(lambda e: loss(tf.constant(labels), e), emb)
    np.testing.assert_allclose(value, reference(emb), **F32)
    np.testing.assert_allclose(grad, numeric_grad(reference, emb), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- Keras classes
def test_loss_classes_match_functions_and_serialise():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(6, 2, 5)).astype("float32")
    labels = np.array([0, 1, 0, 1, 2, 2])
    for loss, fn in [
        (SupConLoss(temperature=0.2, variant="in"),
         lambda: supcon_loss(feats, labels, temperature=0.2, variant="in")),
        (SimCLRLoss(temperature=0.3), lambda: supcon_loss(feats, None, temperature=0.3)),
        (NPairsLoss(temperature=0.1), None),
    ]:
        value = assert_loss_round_trip(loss, labels, feats)
        if fn is not None:
            np.testing.assert_allclose(value, float(fn()), **F32)


def test_supcon_loss_in_model_fit_decreases():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2, 8)).astype("float32")
    y = rng.integers(0, 4, size=64)
    x[:, :, :4] += 2.0 * np.eye(4)[y][:, None, :]   # labels are learnable from x
    inputs = keras.Input((2, 8))
    z = keras.layers.Dense(16)(inputs)
    model = keras.Model(inputs, z)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=SupConLoss(temperature=0.2))
    history = model.fit(x, y, batch_size=32, epochs=15, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0]


# ----------------------------------------------------------------- CE + SupCon
def _tiny_joint_model(views, classes=3, size=4):
    from keras_supcon.models import build_classifier, build_joint_model

    inputs = keras.Input((size, size, 3), name="images")
    features = keras.layers.Dense(6, name="features")(keras.layers.Flatten()(inputs))
    encoder = keras.Model(inputs, features, name="encoder_tiny")
    head_in = keras.Input((6,))
    head = keras.Model(head_in, keras.layers.Dense(5)(head_in), name="projection_head")
    classifier = build_classifier(encoder, classes)
    return build_joint_model(encoder, head, classifier, views=views), classifier


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("weight", [0.0, 0.3, 2.0])
def test_joint_loss_is_ce_plus_weight_times_supcon(views, weight):
    from keras_supcon.data import joint_targets
    from keras_supcon.losses import joint_loss

    keras.utils.set_random_seed(views)
    rng = np.random.default_rng(views)
    model, classifier = _tiny_joint_model(views)
    model.compile(optimizer="sgd", **joint_loss(weight, temperature=0.2, variant="out"))
    x = rng.normal(size=(8, views, 4, 4, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0])
    inputs, targets = joint_targets(tf.constant(x), tf.constant(labels))
    np.testing.assert_array_equal(targets["probabilities"], np.repeat(labels[:, None], views, 1))
    got = model.evaluate(inputs, targets, batch_size=8, return_dict=True, verbose=0)
    out = model(x)
    probs = np.asarray(out["probabilities"], dtype=np.float64)   # [B, V, K]
    # the softmax of each view is the classifier's on that view's image
    np.testing.assert_allclose(probs[:, -1], classifier(x[:, -1]), rtol=1e-5, atol=1e-6)
    ce = float(np.mean([-math.log(probs[b, v, labels[b]])
                        for b in range(8) for v in range(views)]))
    supcon = ref_supcon(np.asarray(out["projections"], np.float64), labels, 0.2, "out")
    np.testing.assert_allclose(got["probabilities_loss"], ce, **F32)
    np.testing.assert_allclose(got["projections_loss"], supcon, **F32)
    np.testing.assert_allclose(got["loss"], ce + weight * supcon, **F32)


def test_joint_loss_rejects_a_negative_weight():
    from keras_supcon.losses import joint_loss

    with pytest.raises(ValueError, match="supcon_weight must be >= 0; got -1"):
        joint_loss(-1)


@pytest.mark.bfloat16
def test_joint_model_probabilities_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model, _ = _tiny_joint_model(views=2)
        out = model(np.random.default_rng(0).normal(size=(4, 2, 4, 4, 3)).astype("float32"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["probabilities"].dtype == "float32"
    assert out["projections"].shape == (4, 2, 5)


def test_loss_registry_builds_every_pretraining_loss_and_knows_its_settings():
    from keras_supcon.errors import ConfigError
    from keras_supcon.losses.registry import (
        END_TO_END,
        LOSSES,
        PRETRAIN,
        build_pretraining_loss,
        get_loss_spec,
        uses_setting,
    )
    from keras_supcon.training import TrainConfig

    assert {s.kind for s in LOSSES.values()} == {PRETRAIN, END_TO_END}
    for name, spec in LOSSES.items():
        config = TrainConfig(loss=name).validate()
        if spec.kind == PRETRAIN:
            loss = build_pretraining_loss(config)
            assert isinstance(loss, keras.losses.Loss) and spec.views
            if spec.temperature:
                assert loss.get_config()["temperature"] == spec.temperature
        else:
            with pytest.raises(ConfigError, match="not a pre-training loss"):
                build_pretraining_loss(config)
    assert not uses_setting("ce", "temperature") and uses_setting("npairs", "temperature")
    assert uses_setting("ce", "epochs") and not uses_setting("supcon", "center_alpha")
    assert uses_setting("supcon+ce", "views") and not uses_setting("ce", "probe")
    with pytest.raises(ConfigError, match="unknown loss 'arcface'"):
        get_loss_spec("arcface")
