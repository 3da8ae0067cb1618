import numpy as np
import pytest
import tensorflow as tf

from seat_tf import losses


def test_cross_entropy_matches_hand_computation():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    expected = [-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))), np.log(3.0)]
    np.testing.assert_allclose(losses.cross_entropy(labels, logits).numpy(), expected, rtol=1e-6)


def test_margin_loss_on_logits_and_probs():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], np.float32)
    labels = np.array([0, 0])
    # max over other classes minus true: 0.5 - 2 = -1.5 (correct), 3 - 0 = 3 (misclassified)
    np.testing.assert_allclose(losses.margin_loss(labels, logits).numpy(), [-1.5, 3.0], rtol=1e-6)
    probs = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(
        losses.margin_loss(labels, logits, on="probs").numpy(),
        [probs[0, 1] - probs[0, 0], probs[1, 1] - probs[1, 0]],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="logits"):
        losses.margin_loss(labels, logits, on="softmax")


def test_dlr_loss_is_shift_and_scale_invariant():
    logits = np.array([[3.0, 1.0, 0.5, -2.0]], np.float32)
    labels = np.array([0])
    base = losses.dlr_loss(labels, logits).numpy()
    np.testing.assert_allclose(base, [-(3.0 - 1.0) / (3.0 - 0.5)], rtol=1e-6)
    np.testing.assert_allclose(losses.dlr_loss(labels, 5.0 * logits + 7.0).numpy(), base, rtol=1e-5)


def test_dlr_losses_match_numpy_on_random_logits():
    """Untargeted and targeted DLR (APGD-CE / APGD-T's losses) against a direct NumPy reading of
    Croce & Hein's formulas, with the true class anywhere in the sorted order."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(64, 10)).astype(np.float32) * 3
    labels, targets = rng.integers(0, 10, 64), rng.integers(0, 10, 64)
    ordered = -np.sort(-z, axis=1)
    others = np.where(np.eye(10, dtype=bool)[labels], -np.inf, z).max(axis=1)
    true = z[np.arange(64), labels]
    expected = -(true - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    np.testing.assert_allclose(losses.dlr_loss(labels, z).numpy(), expected, rtol=1e-5)
    expected_targeted = -(true - z[np.arange(64), targets]) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)
    np.testing.assert_allclose(losses.targeted_dlr_loss(targets, labels, z).numpy(), expected_targeted, rtol=1e-5)


def test_flood_is_identity_above_level_and_reflects_below():
    assert float(losses.flood(tf.constant(0.8), 0.3)) == pytest.approx(0.8)
    assert float(losses.flood(tf.constant(0.1), 0.3)) == pytest.approx(0.5)  # |0.1-0.3|+0.3
    x = tf.Variable(0.1)
    with tf.GradientTape() as tape:
        value = losses.flood(x, 0.3)
    assert float(tape.gradient(value, x)) == pytest.approx(-1.0)  # ascent below the flood level
    assert float(losses.flood(tf.constant(0.1), None)) == pytest.approx(0.1)


def _loss_and_grad(fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return value, tape.gradient(value, x)


def test_linearity_error_is_zero_for_a_linear_loss():
    w = tf.constant(np.random.default_rng(0).normal(size=(4, 5)), tf.float32)
    fn = lambda x: tf.reduce_sum(x * w, axis=1) + 3.0  # noqa: E731
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 5)), tf.float32)
    delta = tf.constant(np.random.default_rng(2).normal(size=(4, 5)), tf.float32)
    loss_clean, grad = _loss_and_grad(fn, x)
    error = losses.linearity_error(fn(x + delta), loss_clean, delta, grad)
    np.testing.assert_allclose(error.numpy(), 0.0, atol=1e-5)


def test_linearity_error_of_a_quadratic_is_the_second_order_term():
    # l(x) = 0.5 x^T A x per example: residual = 0.5 d^T A d exactly.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 5))
    a = tf.constant(a @ a.T - 2.0 * np.eye(5), tf.float32)  # indefinite: residual can be negative
    fn = lambda x: 0.5 * tf.reduce_sum(x * tf.matmul(x, a), axis=1)  # noqa: E731
    x = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    delta = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    loss_clean, grad = _loss_and_grad(fn, x)
    residual = losses.linearity_residual(fn(x + delta), loss_clean, delta, grad)
    expected = 0.5 * tf.reduce_sum(delta * tf.matmul(delta, a), axis=1)
    np.testing.assert_allclose(residual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        losses.linearity_error(fn(x + delta), loss_clean, delta, grad).numpy(), np.abs(expected.numpy()), rtol=1e-4,
        atol=1e-4,
    )


def test_get_rejects_unknown_loss():
    with pytest.raises(ValueError, match="Unknown loss"):
        losses.get("hinge")
    assert losses.get("margin") is losses.margin_loss
