"""keras_supcon.training.optim: the warm-up + cosine schedule against a plain-Python formula
written from its docstring, the optimizers it builds (weight decay, clipping, momentum), the
errors, and the number of steps per epoch."""

import math

import keras
import numpy as np
import pytest
from tolerances import F32

from keras_supcon.errors import ConfigError
from keras_supcon.training.optim import (
    OPTIMIZERS,
    build_before_fit,
    make_optimizer,
    steps_per_epoch,
    warmup_cosine,
)


def expected_lr(step, lr, total_steps, warmup_fraction):
    """The docstring in plain Python: linear from 0 to ``lr`` over the first
    ``round(warmup_fraction * total_steps)`` steps, then a half cosine from ``lr`` to 0 over
    the rest; 0 once the steps are done."""
    warmup = round(warmup_fraction * total_steps)
    if step < warmup:
        return lr * step / warmup
    decay = max(total_steps - warmup, 1)
    t = min(step - warmup, decay) / decay
    return lr * 0.5 * (1 + math.cos(math.pi * t))


def values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


def tol(lr):
    # F32 scaled to the values compared: learning rates are of order ``lr``, not of order 1,
    # so the absolute floor is F32's (1e-6 of a value of 1) times ``lr``.
    return dict(rtol=F32["rtol"], atol=F32["atol"] * lr)


@pytest.mark.parametrize("lr,total,fraction", [(1e-3, 100, 0.1), (0.5, 40, 0.25),
                                                (3e-4, 7, 0.3), (2.0, 50, 0.0)])
def test_schedule_follows_the_docstring_at_every_step(lr, total, fraction):
    steps = np.arange(total + 5)  # and a few steps past the end
    np.testing.assert_allclose(values(warmup_cosine(lr, total, fraction), steps),
                               [expected_lr(s, lr, total, fraction) for s in steps], **tol(lr))


def test_schedule_landmarks():
    lr, total, fraction = 0.1, 200, 0.1
    warmup = 20
    got = values(warmup_cosine(lr, total, fraction), range(total + 3))
    assert got[0] == 0.0  # warm-up starts from 0
    np.testing.assert_allclose(got[warmup // 2], lr / 2, **tol(lr))  # linear: half-way, half
    np.testing.assert_allclose(got[warmup], lr, **tol(lr))  # the end of warm-up is the peak
    assert got.argmax() == warmup
    np.testing.assert_allclose(got.max(), lr, **tol(lr))
    # half-way through the cosine, half the peak
    np.testing.assert_allclose(got[warmup + (total - warmup) // 2], lr / 2, **tol(lr))
    np.testing.assert_allclose(got[total:], 0.0, atol=tol(lr)["atol"])  # 0 at the end, after
    assert got[total - 1] > 0
    # strictly up during the warm-up, strictly down during the decay
    assert np.all(np.diff(got[:warmup + 1]) > 0)
    assert np.all(np.diff(got[warmup:total + 1]) < 0)


def test_no_warmup_starts_at_the_peak_and_decays():
    lr, total = 0.01, 30
    got = values(warmup_cosine(lr, total, 0.0), range(total + 1))
    np.testing.assert_allclose(got[0], lr, **tol(lr))
    assert np.all(np.diff(got) < 0)
    np.testing.assert_allclose(got[-1], 0.0, atol=tol(lr)["atol"])


def test_degenerate_step_counts():
    # total_steps is at least 1: 0 steps decays over one step, from the peak
    got = values(warmup_cosine(0.1, 0, 0.1), [0, 1, 2])
    np.testing.assert_allclose(got, [0.1, 0.0, 0.0], atol=tol(0.1)["atol"])
    # a warm-up that rounds to 0 steps (0.4 of 1) is no warm-up
    np.testing.assert_allclose(values(warmup_cosine(0.1, 1, 0.4), [0]), [0.1], **tol(0.1))
    # a warm-up of every step but one
    got = values(warmup_cosine(0.1, 4, 0.75), range(6))
    np.testing.assert_allclose(got, [expected_lr(s, 0.1, 4, 0.75) for s in range(6)],
                               **tol(0.1))
    assert got.argmax() == 3


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ConfigError, match="learning rate must be > 0"):
        warmup_cosine(lr, 100)
    with pytest.raises(ConfigError, match="learning rate must be > 0"):
        make_optimizer("adam", lr, total_steps=100)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_warmup_fraction_must_be_in_0_1(fraction):
    with pytest.raises(ConfigError, match=r"warm-up fraction must be in \[0, 1\)"):
        warmup_cosine(1e-3, 100, fraction)


def test_every_listed_optimizer_builds_with_the_schedule():
    assert OPTIMIZERS == ("adam", "sgd")
    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    for name in OPTIMIZERS:
        opt = make_optimizer(name, 0.1, total_steps=50, warmup_fraction=0.2)
        assert type(opt) is classes[name]
        schedule = opt._learning_rate
        assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
        np.testing.assert_allclose(values(schedule, range(52)),
                                   [expected_lr(s, 0.1, 50, 0.2) for s in range(52)],
                                   **tol(0.1))
        # the optimizer's learning rate at iteration 0 is the schedule's: 0, warming up
        assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == 0.0
    assert make_optimizer("sgd", 0.1, total_steps=10).momentum == 0.9


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamw'; choose one of: adam, sgd"):
        make_optimizer("adamw", 1e-3, total_steps=10)
    assert issubclass(ConfigError, ValueError)


def test_weight_decay_and_clipnorm_reach_the_keras_optimizer():
    opt = make_optimizer("adam", 1e-3, total_steps=10, weight_decay=5e-4, clipnorm=2.0)
    assert opt.weight_decay == pytest.approx(5e-4)
    assert opt.global_clipnorm == pytest.approx(2.0)
    assert opt.clipnorm is None and opt.clipvalue is None
    # no decay, no clipping: neither is set
    opt = make_optimizer("sgd", 1e-3, total_steps=10)
    assert opt.weight_decay is None and opt.global_clipnorm is None


def _one_step(opt, value, grad):
    var = keras.Variable(np.asarray(value, np.float32))
    opt.apply_gradients([(keras.ops.convert_to_tensor(np.asarray(grad, np.float32)), var)])
    return keras.ops.convert_to_numpy(var)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_is_decoupled_and_scaled_by_the_learning_rate(name):
    """With a zero gradient, Adam's and SGD's own step is 0: one step leaves
    ``w * (1 - lr * weight_decay)`` (the learning rate at step 0, no warm-up)."""
    lr, wd = 0.1, 0.5
    w = [1.0, -2.0, 4.0]
    decayed = _one_step(make_optimizer(name, lr, total_steps=10, weight_decay=wd,
                                       warmup_fraction=0.0), w, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(decayed, np.multiply(w, 1 - lr * wd), **F32)
    plain = _one_step(make_optimizer(name, lr, total_steps=10, warmup_fraction=0.0), w,
                      [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(plain, w)


def test_clipnorm_rescales_the_global_gradient_norm():
    """SGD's first step is ``-lr * g`` (momentum starts at 0); with clipnorm 1 the
    gradient [3, 4] (norm 5) becomes [0.6, 0.8]; a gradient under the norm is kept."""
    lr = 0.1
    clipped = _one_step(make_optimizer("sgd", lr, total_steps=10, warmup_fraction=0.0,
                                       clipnorm=1.0), [0.0, 0.0], [3.0, 4.0])
    np.testing.assert_allclose(clipped, [-lr * 0.6, -lr * 0.8], **F32)
    kept = _one_step(make_optimizer("sgd", lr, total_steps=10, warmup_fraction=0.0,
                                    clipnorm=10.0), [0.0, 0.0], [3.0, 4.0])
    np.testing.assert_allclose(kept, [-lr * 3.0, -lr * 4.0], **F32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(weight_decay=-1e-4), "weight decay must be >= 0"),
    (dict(clipnorm=0.0), "gradient clipping norm must be > 0"),
    (dict(clipnorm=-1.0), "gradient clipping norm must be > 0"),
])
def test_bad_decay_or_clipping_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_optimizer("adam", 1e-3, total_steps=10, **kwargs)


@pytest.mark.parametrize("n,batch,keep,drop", [
    (100, 10, 10, 10),  # divides evenly: no partial batch either way
    (101, 10, 11, 10),  # one example over: a partial batch, dropped or not
    (99, 10, 10, 9),
    (5, 10, 1, 1),  # fewer examples than a batch: still one step
    (0, 10, 1, 1),
    (1, 1, 1, 1),
])
def test_steps_per_epoch(n, batch, keep, drop):
    assert steps_per_epoch(n, batch) == keep
    assert steps_per_epoch(n, batch, drop_remainder=False) == keep
    assert steps_per_epoch(n, batch, drop_remainder=True) == drop


def _traces_of_one_fit(build_first):
    """How many times ``fit`` traces a compiled model's training step (each trace calls
    ``train_step`` in Python once)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer=make_optimizer("adam", 1e-2, total_steps=4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.arange(16) % 4
    if build_first:
        build_before_fit(model, (x[:4], y[:4]))
    traces, step = [], model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return len(traces), model.optimizer.iterations.numpy()


def test_fit_traces_the_training_step_once_after_build_before_fit():
    """Keras' TensorFlow trainer creates the optimizer's and the metrics' variables while
    tracing the step, and tf.function then traces it again; built first, it traces once
    (every stage of the package's jobs does this: training.stages.fit_stage). If Keras
    starts building them itself, the first count drops to 1 and the helper can go."""
    assert _traces_of_one_fit(build_first=False) == (2, 8)
    assert _traces_of_one_fit(build_first=True) == (1, 8)
