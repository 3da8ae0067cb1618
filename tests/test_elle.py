"""ELLE / ELLE-A pinned against closed forms computed here in NumPy.

The classifier of these tests has logits [OFFSET + s * ||x - c||^2, 0] and label 1, so its
cross-entropy is exactly l(x) = OFFSET + s * ||x - c||^2 (exp(-OFFSET) vanishes in float32):
a quadratic whose chord gap is -s * a (1 - a) ||x_a - x_b||^2.
"""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf.training import elle

OFFSET = 50.0


def quadratic_classifier(shape, scale, centre=0.5, linear_weights=None):
    """logits = [OFFSET + scale * sum((x - centre)^2) (+ w.x), 0]."""
    inputs = keras.Input(shape=shape)
    flat = keras.layers.Flatten()(inputs)
    squared = keras.layers.Lambda(lambda v: scale * tf.reduce_sum(tf.square(v - centre), -1, keepdims=True))(flat)
    if linear_weights is not None:
        dense = keras.layers.Dense(1, use_bias=False, name="w")
        squared = squared + dense(flat)
    first = squared + OFFSET
    logits = keras.layers.Concatenate()([first, keras.ops.zeros_like(first)])
    model = keras.Model(inputs, logits)
    if linear_weights is not None:
        model.get_layer("w").set_weights([np.asarray(linear_weights, np.float32).reshape(-1, 1)])
    return model


class ScriptedNoise:
    """Stands in for seat_tf.attacks inside elle.py: random_start returns scripted draws, in
    call order (x_a's offset, x_b's offset, then the per-example U(-1, 1) behind a)."""

    def __init__(self, draws):
        self.draws = list(draws)

    def random_start(self, x, radius, init, seed=None):
        assert init == "uniform"
        return tf.constant(self.draws.pop(0), tf.float32) * radius


def _model(classifier, **kwargs):
    model = seat_tf.ELLEModel(classifier, val_attack=None, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_chord_gap_is_zero_for_an_affine_loss():
    # scale 0: l(x) = OFFSET + w.x, affine, so every chord has gap 0 (random points).
    rng = np.random.default_rng(0)
    w = rng.normal(size=16)
    model = _model(quadratic_classifier((4, 4, 1), 0.0, linear_weights=w), epsilon=0.2)
    x = tf.constant(rng.uniform(0.3, 0.7, (8, 4, 4, 1)), tf.float32)
    gap = model.chord_gap(x, tf.ones([8], tf.int32)).numpy()
    np.testing.assert_allclose(gap, 0.0, atol=2e-4)


def test_chord_gap_of_a_quadratic_matches_the_closed_form(monkeypatch):
    rng = np.random.default_rng(1)
    batch, shape, eps, scale = 4, (3, 3, 1), 0.1, 2.0
    x = rng.uniform(0.3, 0.7, (batch,) + shape).astype(np.float32)
    u_a, u_b = rng.uniform(-1, 1, (2, batch) + shape)
    u_alpha = rng.uniform(-1, 1, (batch, 1, 1, 1))
    monkeypatch.setattr(elle, "attacks", ScriptedNoise([u_a, u_b, u_alpha]))
    model = _model(quadratic_classifier(shape, scale), epsilon=eps)
    gap = model.chord_gap(tf.constant(x), tf.ones([batch], tf.int32)).numpy()

    x_a, x_b, a = x + eps * u_a, x + eps * u_b, (u_alpha.reshape(-1) + 1) / 2
    expected = -scale * a * (1 - a) * np.sum((x_a - x_b) ** 2, axis=(1, 2, 3))
    assert np.all(expected < 0)
    np.testing.assert_allclose(gap, expected, rtol=2e-3, atol=2e-5)


def test_objective_is_adversarial_ce_plus_lam_times_mean_squared_gap(monkeypatch):
    rng = np.random.default_rng(2)
    batch, shape, eps, scale, lam = 4, (2, 2, 1), 0.2, 3.0, 7.0
    x = rng.uniform(0.3, 0.7, (batch,) + shape).astype(np.float32)
    x_adv = np.clip(x + eps * np.sign(rng.normal(size=x.shape)), 0, 1).astype(np.float32)
    u_a, u_b = rng.uniform(-1, 1, (2, batch) + shape)
    u_alpha = rng.uniform(-1, 1, (batch, 1, 1, 1))
    monkeypatch.setattr(elle, "attacks", ScriptedNoise([u_a, u_b, u_alpha]))
    model = _model(quadratic_classifier(shape, scale), epsilon=eps, lam=lam)
    loss, logs = model.objective(tf.constant(x), tf.ones([batch], tf.int32), tf.constant(x_adv), None)

    ce = lambda z: OFFSET + scale * np.sum((z - 0.5) ** 2, axis=(1, 2, 3))  # noqa: E731
    a = (u_alpha.reshape(-1) + 1) / 2
    x_a, x_b = x + eps * u_a, x + eps * u_b
    gap = ce((1 - a)[:, None, None, None] * x_a + a[:, None, None, None] * x_b) - (1 - a) * ce(x_a) - a * ce(x_b)
    expected = np.mean(ce(x_adv)) + lam * np.mean(gap**2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(logs["elle_error"].numpy(), gap**2, rtol=5e-3, atol=1e-8)


def test_the_term_pushes_the_weights_towards_linearity():
    # Weight gradient of lam * mean gap^2 w.r.t. a curvature weight k (logits OFFSET + k ||x - c||^2):
    # gap = -k a (1-a) ||x_a - x_b||^2, so d gap^2 / dk = 2 k (a (1-a) ||.||^2)^2 > 0 for k > 0:
    # gradient descent must shrink the curvature.
    inputs = keras.Input(shape=(2, 2, 1))
    flat = keras.layers.Flatten()(inputs)
    sq = keras.layers.Lambda(lambda v: tf.reduce_sum(tf.square(v - 0.5), -1, keepdims=True))(flat)
    curved = keras.layers.Dense(1, use_bias=False, name="k")(sq)
    first = curved + OFFSET
    classifier = keras.Model(inputs, keras.layers.Concatenate()([first, keras.ops.zeros_like(first)]))
    classifier.get_layer("k").set_weights([np.array([[2.0]], np.float32)])
    model = _model(classifier, epsilon=0.3, lam=1.0)
    x = tf.constant(np.full((8, 2, 2, 1), 0.5, np.float32))
    y = tf.ones([8], tf.int32)
    with tf.GradientTape() as tape:
        gap = model.chord_gap(x, y)
        term = tf.reduce_mean(tf.square(gap))
    (grad,) = tape.gradient(term, [classifier.get_layer("k").kernel])
    assert float(term) > 0
    assert float(tf.squeeze(grad)) > 0


def _numpy_elle_a(errors, lam_max, sensitivity, decay):
    lam, history, out = 0.0, [], []
    for error in errors:
        history.append(error)
        if len(history) > 2 and error > np.mean(history) + sensitivity * np.std(history):
            lam = lam_max
        else:
            lam *= decay
        out.append(lam)
    return out


def test_elle_a_lambda_schedule_matches_the_rule():
    model = seat_tf.ELLEAModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), epsilon=0.1, lam=50.0,
                               sensitivity=2.0, decay=0.9, val_attack=None)
    # With the value itself in the history, a lone spike needs >= 6 values to lie 2 std above the mean.
    errors = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 9.0, 1.0, 1.2, 0.8, 1.0, 30.0, 1.0]
    got = []
    for i, error in enumerate(errors):
        got.append(float(model._next_lambda(tf.constant(error, tf.float32))))
        # The running statistics (Welford) are the mean and population std of all values so far.
        std = np.sqrt(float(model.error_m2) / float(model.error_count))
        np.testing.assert_allclose([float(model.error_mean), std], [np.mean(errors[:i + 1]), np.std(errors[:i + 1])],
                                   rtol=1e-5, atol=1e-7)
    expected = _numpy_elle_a(errors, 50.0, 2.0, 0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[5] == 0.0 and got[6] == 50.0 and got[11] == 50.0 and 0 < got[-1] < 50.0


def test_elle_starts_with_constant_lambda_and_elle_a_with_zero():
    clf = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert float(seat_tf.ELLEModel(clf, lam=5.0, val_attack=None).current_lam) == 5.0
    assert float(seat_tf.ELLEAModel(clf, lam=5.0, val_attack=None).current_lam) == 0.0
    with pytest.raises(ValueError, match="lam"):
        seat_tf.ELLEModel(clf, lam=-1.0)
    with pytest.raises(ValueError, match="decay"):
        seat_tf.ELLEModel(clf, decay=0.0)


def test_attack_is_fgsm_by_default(make_linear):
    # Zero start, one signed step of eps on the cross-entropy of a linear model: x + eps sign(W[:, j*] - W[:, y]) where
    # the CE gradient is W (p - onehot); checked in NumPy.
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    model = _model(make_linear(w, np.zeros(3), (2, 2, 1)), epsilon=0.1)
    x = rng.uniform(0.3, 0.7, (5, 2, 2, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1], np.int32)
    x_adv = model.perturb(tf.constant(x), tf.constant(y), tf.constant(0.1), None).numpy()
    logits = x.reshape(5, -1) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y]) @ w.T
    np.testing.assert_allclose(x_adv.reshape(5, -1), x.reshape(5, -1) + 0.1 * np.sign(grad), atol=1e-6)
