"""Triplet, center and Barlow Twins losses against plain-loop float64 references.

The references are written from the formulas with Python loops (``math`` only);
gradients are checked against central finite differences of the references.
"""

import math
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from roundtrip import assert_layer_round_trip, assert_loss_round_trip
from test_losses import LABEL_PATTERNS, numeric_grad, tf_value_and_grad
from tolerances import F32, F64

from keras_supcon.losses import (
    BarlowTwinsLoss,
    CenterLoss,
    TripletLoss,
    barlow_twins_loss,
    center_loss,
    random_triplets,
    triplet_loss,
    update_centers,
)


# ----------------------------------------------------------------- references
def _normalise(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _anchors(emb, labels):
    """[B, D] or [B, V, D] -> normalised anchors (sample-major) and their labels."""
    emb = emb if emb.ndim == 3 else emb[:, None]
    anchors, anchor_labels = [], []
    for b in range(emb.shape[0]):
        for v in range(emb.shape[1]):
            anchors.append(_normalise(list(emb[b, v])))
            anchor_labels.append(int(labels[b]))
    return anchors, anchor_labels


def ref_triplet(emb, labels, margin, mining, squared, drawn=None):
    """drawn = (positive, negative) indices per anchor for mining="random"."""
    z, lab = _anchors(emb, labels)
    n = len(z)
    d = [[sum((p - q) ** 2 for p, q in zip(z[a], z[b])) for b in range(n)] for a in range(n)]
    if not squared:
        d = [[math.sqrt(x) for x in row] for row in d]
    pos = [[p for p in range(n) if p != a and lab[p] == lab[a]] for a in range(n)]
    neg = [[q for q in range(n) if lab[q] != lab[a]] for a in range(n)]
    if mining == "semihard":
        values = []
        for a in range(n):
            if not neg[a]:
                continue
            for p in pos[a]:
                farther = [d[a][q] for q in neg[a] if d[a][q] > d[a][p]]
                d_an = min(farther) if farther else max(d[a][q] for q in neg[a])
                values.append(max(d[a][p] - d_an + margin, 0.0))
        return sum(values) / len(values) if values else 0.0
    if mining == "all":
        values = [max(d[a][p] - d[a][q] + margin, 0.0)
                  for a in range(n) for p in pos[a] for q in neg[a]]
        active = [v for v in values if v > 0]
        return sum(active) / len(active) if active else 0.0
    losses = []
    for a in range(n):
        if not pos[a] or not neg[a]:
            continue
        if mining == "hard":
            d_ap, d_an = max(d[a][p] for p in pos[a]), min(d[a][q] for q in neg[a])
        else:
            d_ap, d_an = d[a][drawn[0][a]], d[a][drawn[1][a]]
        losses.append(max(d_ap - d_an + margin, 0.0))
    return sum(losses) / len(losses) if losses else 0.0


def ref_center(x, labels, centers):
    total = 0.0
    for i in range(len(x)):
        c = centers[int(labels[i])]
        total += 0.5 * sum((x[i][k] - c[k]) ** 2 for k in range(len(c)))
    return total / len(x)


def ref_update(x, labels, centers, alpha):
    new = []
    for j in range(len(centers)):
        members = [i for i in range(len(x)) if int(labels[i]) == j]
        new.append([centers[j][k] - alpha * sum(centers[j][k] - x[i][k] for i in members)
                    / (1 + len(members)) for k in range(len(centers[j]))])
    return new


def ref_barlow(z_a, z_b, lambda_, epsilon=1e-5):
    n, dim = len(z_a), len(z_a[0])

    def standardise(z):   # -> columns [D][N]
        cols = []
        for k in range(dim):
            col = [z[i][k] for i in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n
            cols.append([(v - mean) / math.sqrt(var + epsilon) for v in col])
        return cols

    a, b = standardise(z_a), standardise(z_b)
    loss = 0.0
    for i in range(dim):
        for j in range(dim):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1.0 - c) ** 2 if i == j else lambda_ * c * c
    return loss


# ----------------------------------------------------------------- triplet
# (shape, margin): B in 4, 7, 12; D in 3, 16; one and two views.
TRIPLET_CASES = [((4, 16), 0.2), ((7, 3), 1.0), ((12, 3), 0.5), ((4, 2, 16), 0.0),
                 ((7, 2, 3), 0.3)]


@pytest.mark.parametrize("case", TRIPLET_CASES, ids=lambda c: f"{c[0]}-m{c[1]}")
@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("squared", [False, True], ids=["euclid", "squared"])
@pytest.mark.parametrize("mining", ["semihard", "hard", "all", "random"])
def test_triplet_matches_reference(case, pattern, squared, mining):
    shape, margin = case
    rng = np.random.default_rng(zlib.crc32(repr((shape, pattern, squared, mining)).encode()))
    emb = rng.normal(size=shape)
    labels = LABEL_PATTERNS[pattern](shape[0], rng)
    seed, drawn = 17, None
    if mining == "random":
        views = shape[1] if len(shape) == 3 else 1
        pos, neg, _ = random_triplets(np.repeat(labels, views), seed=seed)
        drawn = (pos.numpy().tolist(), neg.numpy().tolist())

    def ours(e):
        return triplet_loss(tf.constant(labels), e, margin=margin, mining=mining,
                            squared=squared, seed=seed)

    def reference(e):
        return ref_triplet(e, labels, margin, mining, squared, drawn)

    value, grad = tf_value_and_grad(ours, emb)
    np.testing.assert_allclose(value, reference(emb), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(grad, numeric_grad(reference, emb), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mining", ["semihard", "hard", "all", "random"])
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_without_valid_anchor_is_zero_with_zero_gradient(mining, squared):
    rng = np.random.default_rng(0)
    for emb, labels in [(rng.normal(size=(6, 4)), np.arange(6)),          # all distinct
                        (rng.normal(size=(6, 4)), np.zeros(6, int)),      # one class
                        (rng.normal(size=(5, 2, 4)), np.full(5, 3))]:     # one class, 2 views
        value, grad = tf_value_and_grad(
            lambda e: triplet_loss(labels, e, mining=mining, squared=squared, seed=1), emb)
        assert value == 0.0 and np.all(grad == 0)


@pytest.mark.parametrize("mining", ["semihard", "hard", "all", "random"])
def test_triplet_gradient_finite_at_coincident_embeddings(mining):
    # Each class: two identical points; classes closer than the margin (active hinges).
    base = 1.0 + 0.05 * np.random.default_rng(1).normal(size=(3, 5))
    emb = np.repeat(base, 2, axis=0)
    labels = np.array([0, 0, 1, 1, 2, 2])
    for dtype in ["float32", "float64"]:
        e = tf.constant(emb, dtype=dtype)
        with tf.GradientTape() as tape:
            tape.watch(e)
            loss = triplet_loss(labels, e, mining=mining, seed=0)
        assert np.isfinite(float(loss)) and float(loss) > 0
        assert np.all(np.isfinite(tape.gradient(loss, e).numpy()))
    if mining != "random":
        np.testing.assert_allclose(float(triplet_loss(labels, emb, mining=mining)),
                                   ref_triplet(emb, labels, 0.2, mining, False), **F32)


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
@pytest.mark.parametrize("margin", [0.0, 0.1, 0.7, 2.0])
def test_triplet_margins(mining, margin):
    rng = np.random.default_rng(2)
    emb, labels = rng.normal(size=(9, 2, 5)), rng.integers(0, 3, size=9)
    got = float(triplet_loss(labels, emb, margin=margin, mining=mining))
    np.testing.assert_allclose(got, ref_triplet(emb, labels, margin, mining, False), **F32)


def test_random_triplets_valid_and_uniform_over_candidates():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 0])
    n, draws = len(labels), 300
    draw = tf.function(lambda gen: random_triplets(labels, seed=gen))
    gen = keras.random.SeedGenerator(123)
    pos_counts, neg_counts = np.zeros((n, n)), np.zeros((n, n))
    for _ in range(draws):
        pos, neg, valid = (t.numpy() for t in draw(gen))
        np.testing.assert_array_equal(valid, [True] * 5 + [False] + [True] * 4 + [False, True])
        np.testing.assert_array_equal(pos[~valid], np.flatnonzero(~valid))
        pos_counts[np.arange(n), pos] += 1
        neg_counts[np.arange(n), neg] += 1
    for a in np.flatnonzero(valid):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        for counts, candidates in [(pos_counts[a], positives), (neg_counts[a], negatives)]:
            assert set(np.flatnonzero(counts)) == set(candidates)   # only and all candidates
            expected = draws / len(candidates)
            assert np.all(np.abs(counts[candidates] - expected) < 0.5 * expected)


def test_random_triplets_same_int_seed_same_draw():
    labels = np.random.default_rng(3).integers(0, 4, size=20)
    a, b, c = (random_triplets(labels, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_triplet_loss_class_matches_function_and_serialises():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(10, 2, 6)).astype("float32")
    labels = rng.integers(0, 3, size=10)
    for kwargs in [dict(), dict(mining="hard"), dict(mining="all", margin=0.5, squared=True)]:
        value = assert_loss_round_trip(TripletLoss(**kwargs), labels, emb)
        np.testing.assert_allclose(value, float(triplet_loss(labels, emb, **kwargs)), **F32)
    # Random mining: a fresh draw per call, reproducible from the seed.
    first, second = TripletLoss(mining="random", seed=9), TripletLoss(mining="random", seed=9)
    values = [float(first(labels, emb)) for _ in range(3)]
    assert [float(second(labels, emb)) for _ in range(3)] == values
    assert len(set(values)) == 3
    assert TripletLoss.from_config(first.get_config()).get_config() == first.get_config()


def test_triplet_random_mining_in_model_fit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(48, 2, 6)).astype("float32"), rng.integers(0, 4, size=48)
    inputs = keras.Input((2, 6))
    model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    model.compile(optimizer="adam", loss=TripletLoss(mining="random", seed=0))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_semihard_picks_the_nearest_negative_beyond_the_positive():
    # 1-D points on the unit circle's x axis are all +-1 after normalisation: use angles.
    # anchor 0 at angle 0, positive 1 at 0.3 rad; negatives at 0.1 (hard), 0.5 and 0.9 rad.
    angles = np.array([0.0, 0.3, 0.1, 0.5, 0.9])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 1, 1])
    chord = lambda a, b: 2 * np.sin(abs(a - b) / 2)  # noqa: E731
    # anchor 0: positive at 0.3 -> semi-hard negative 0.5 (not the hard 0.1);
    # anchor 1: positive at 0.0 -> nearest negative farther than chord(0.3): 0.9 (chord 0.6).
    # Negatives 2, 3, 4 are anchors too: positives 3, 4 / 2, 4 / 2, 3, each against the
    # negatives 0 and 1.
    margin = 0.5
    expected = []
    for a, p in [(0, 1), (1, 0), (2, 3), (2, 4), (3, 2), (3, 4), (4, 2), (4, 3)]:
        d_ap = chord(angles[a], angles[p])
        negs = [chord(angles[a], angles[n]) for n in range(5) if labels[n] != labels[a]]
        farther = [x for x in negs if x > d_ap]
        d_an = min(farther) if farther else max(negs)
        expected.append(max(d_ap - d_an + margin, 0))
    assert expected[0] == pytest.approx(max(chord(0, .3) - chord(0, .5) + margin, 0))
    got = float(triplet_loss(labels, emb, margin=margin, mining="semihard"))
    np.testing.assert_allclose(got, np.mean(expected), **F32)


def test_triplet_rejects_bad_arguments():
    emb, labels = np.zeros((4, 3)), [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"mining must be one of \('semihard', 'hard', "
                                         r"'all', 'random'\)"):
        triplet_loss(labels, emb, mining="semi-hard")
    with pytest.raises(ValueError, match="margin must be >= 0; got -0.1"):
        triplet_loss(labels, emb, margin=-0.1)
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="easy")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError, match="rank"):
        triplet_loss(labels, np.zeros((4, 2, 3, 1)))


# ----------------------------------------------------------------- center loss
@pytest.mark.parametrize("batch,dim,classes", [(6, 3, 3), (9, 5, 4)])
def test_center_loss_value_and_gradient(batch, dim, classes):
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, dim))
    labels = rng.integers(0, classes, size=batch)
    centers = rng.normal(size=(classes, dim))
    value, grad = tf_value_and_grad(lambda f: center_loss(f, labels, centers), x)
    reference = lambda f: ref_center(f.tolist(), labels, centers.tolist())  # noqa: E731
    np.testing.assert_allclose(value, reference(x), **F64)
    np.testing.assert_allclose(grad, numeric_grad(reference, x), rtol=1e-6, atol=1e-8)
    c = tf.Variable(centers)
    with tf.GradientTape() as tape:
        loss = center_loss(x, labels, c)
    assert tape.gradient(loss, c) is None            # centres are not learned by backprop


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.1])
def test_update_centers_matches_paper_eq4(alpha):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 4))
    labels = np.array([0, 2, 2, 0, 4, 2, 0, 4, 2, 2])    # classes 1 and 3 absent
    centers = rng.normal(size=(5, 4))
    got = update_centers(x, labels.astype("float32")[:, None], centers, alpha).numpy()
    np.testing.assert_allclose(got, ref_update(x.tolist(), labels, centers.tolist(), alpha),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(got[[1, 3]], centers[[1, 3]])


def _center_model(classes=3):
    x_in, y_in = keras.Input((6,), name="x"), keras.Input((), dtype="int32", name="y")
    h = keras.layers.Dense(4, name="embed")(x_in)
    h = CenterLoss(classes, weight=0.1, alpha=0.5, name="center")([h, y_in])
    out = keras.layers.Dense(classes, activation="softmax")(h)
    return keras.Model([x_in, y_in], out)


def test_center_loss_layer_in_model_fit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 3, size=48)
    model = _center_model()
    layer = model.get_layer("center")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(len(model.losses)))
    model.fit(x=(x, y), y=y, batch_size=16, epochs=2, verbose=0, callbacks=[record])
    assert len(seen) == 6 and all(seen)
    assert np.all(np.isfinite(layer.centers.numpy())) and np.any(layer.centers.numpy() != 0)

    # Eagerly: training adds weight * center_loss and moves the centres, inference does neither.
    embed = keras.Model(model.inputs[0], model.get_layer("embed").output)
    xb, yb = x[:16], y[:16]
    feats = embed(xb).numpy().astype("float64")
    before = layer.centers.numpy().astype("float64")
    model([xb, yb], training=False)
    assert model.losses == [] and np.array_equal(layer.centers.numpy(), before)
    model([xb, yb], training=True)
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]),
                               0.1 * ref_center(feats.tolist(), yb, before.tolist()), **F32)

    # One exact train step: learning rate 0 keeps the features, so the centres move by
    # update_centers of the features seen and the loss is cross-entropy + weight * L_C.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    before = layer.centers.numpy().astype("float64")
    probs = model([xb, yb], training=False).numpy().astype("float64")
    loss = model.train_on_batch(x=(xb, yb), y=yb)
    np.testing.assert_allclose(
        layer.centers.numpy(), ref_update(feats.tolist(), yb, before.tolist(), 0.5),
        rtol=1e-5, atol=1e-6)
    cross_entropy = -sum(math.log(probs[i][yb[i]]) for i in range(len(yb))) / len(yb)
    expected = cross_entropy + 0.1 * ref_center(feats.tolist(), yb, before.tolist())
    np.testing.assert_allclose(float(loss), expected, **F32)


def test_center_loss_layer_float32_under_mixed_precision():
    rng = np.random.default_rng(9)
    feats = tf.constant(rng.normal(size=(8, 5)), dtype="float16")
    labels = tf.constant(rng.integers(0, 3, size=(8, 1)).astype("float32"))   # [B, 1] floats
    layer = CenterLoss(3, alpha=1.0, dtype="mixed_float16")
    out = layer([feats, labels], training=True)
    assert out.dtype == tf.float16 and np.array_equal(out.numpy(), feats.numpy())
    assert layer.centers.dtype == "float32" and layer.losses[0].dtype == tf.float32
    x64 = feats.numpy().astype("float64").tolist()
    lab = labels.numpy()[:, 0].astype(int)
    np.testing.assert_allclose(float(layer.losses[0]),
                               0.003 * ref_center(x64, lab, [[0.0] * 5] * 3), **F32)
    np.testing.assert_allclose(layer.centers.numpy(), ref_update(x64, lab, [[0.0] * 5] * 3, 1.0),
                               rtol=1e-6, atol=1e-7)


def test_center_loss_layer_errors():
    feats, labels = np.zeros((4, 3), "float32"), np.zeros(4, "int32")
    for bad in [lambda: CenterLoss(3)(feats), lambda: CenterLoss(3)([feats, None]),
                lambda: CenterLoss(3)([feats]), lambda: CenterLoss(3)(keras.Input((3,)))]:
        with pytest.raises(ValueError, match=r"center loss needs the class labels: call "
                                             r"CenterLoss\(\)\(\[features, labels\]\)"):
            bad()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        CenterLoss(3, weight=-0.1)
    for alpha in [0.0, 1.5, -1.0]:
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
            CenterLoss(3, alpha=alpha)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        CenterLoss(0)
    CenterLoss(3)([feats, labels])                    # fine


def test_center_loss_serialises_and_saves_centres(tmp_path):
    assert assert_layer_round_trip(CenterLoss(5, weight=0.01, alpha=0.3, name="c")).alpha == 0.3

    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 3, size=8)
    model = _center_model()
    model([x, y], training=True)                      # centres move away from zeros
    centres = model.get_layer("center").centers.numpy()
    assert np.any(centres != 0)
    model.save(tmp_path / "center.keras")
    loaded = keras.saving.load_model(tmp_path / "center.keras")
    np.testing.assert_array_equal(loaded.get_layer("center").centers.numpy(), centres)
    assert not loaded.get_layer("center").centers.trainable
    np.testing.assert_allclose(loaded([x, y]).numpy(), model([x, y]).numpy(), **F32)


# ----------------------------------------------------------------- Barlow Twins
@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("dim", [3, 8])
@pytest.mark.parametrize("lambda_", [5e-3, 0.5])
def test_barlow_twins_matches_reference(n, dim, lambda_):
    rng = np.random.default_rng(n * 100 + dim)
    z = rng.normal(size=(n, 2, dim))
    z[:, 1] += 0.8 * z[:, 0]                           # correlated views

    def reference(v):
        return ref_barlow(v[:, 0].tolist(), v[:, 1].tolist(), lambda_)

    value, grad = tf_value_and_grad(
        lambda v: barlow_twins_loss(v[:, 0], v[:, 1], lambda_=lambda_), z)
    np.testing.assert_allclose(value, reference(z), **F64)
    np.testing.assert_allclose(grad, numeric_grad(reference, z), rtol=1e-5, atol=1e-7)


def test_barlow_twins_class_matches_function_and_serialises():
    rng = np.random.default_rng(11)
    z = rng.normal(size=(12, 2, 7)).astype("float32")
    value = assert_loss_round_trip(BarlowTwinsLoss(lambda_=0.01), np.arange(12), z)
    np.testing.assert_allclose(value, ref_barlow(z[:, 0].tolist(), z[:, 1].tolist(), 0.01),
                               **F32)


def test_barlow_twins_errors():
    loss = BarlowTwinsLoss()
    for shape in [(4, 5), (4, 1, 5), (4, 3, 5)]:
        with pytest.raises(ValueError, match=r"Barlow Twins needs exactly two views per image "
                                             r"\(features \[B, 2, D\]\); got shape"):
            loss(np.zeros(4), np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match="batch of at least 2; got 1"):
        loss(np.zeros(1), np.ones((1, 2, 5), "float32"))
    with pytest.raises(ValueError, match="lambda_ must be >= 0"):
        BarlowTwinsLoss(lambda_=-1.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        barlow_twins_loss(np.zeros((4, 2, 5)), np.zeros((4, 2, 5)))
