"""Issue-4 baselines: perturbation budgets and the special cases that pin each method down."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf.training.baselines import GradAlignModel


def _perturbation(model, x, y, eps):
    model.compile(optimizer="sgd")
    x_t, y_t = tf.constant(x), tf.constant(y)
    clean = model.compute_clean_pass(x_t, y_t, tf.GradientTape()) if model.clean_pass else None
    return model.perturb(x_t, y_t, tf.constant(eps), clean).numpy()


@pytest.mark.parametrize("name", ["seat", "fgsm_at", "rs_fgsm", "pgd_at", "trades", "grad_align"])
def test_perturbations_obey_the_budget(make_tiny_cnn, toy_data, name):
    x, y = toy_data
    x_adv = _perturbation(seat_tf.get_method(name)(make_tiny_cnn(), epsilon=0.1), x, y, 0.1)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > 0.05  # it did move


def test_n_fgsm_exceeds_eps_by_design_but_stays_within_three_eps(make_tiny_cnn, toy_data):
    x, y = toy_data
    x_adv = _perturbation(seat_tf.NFGSMModel(make_tiny_cnn(), epsilon=0.05), x, y, 0.05)
    distance = np.abs(x_adv - x).max(axis=(1, 2, 3))
    assert distance.max() > 0.05 + 1e-3  # noise 2 eps + step eps, no projection
    assert distance.max() <= 3 * 0.05 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_fgsm_at_perturbation_is_exactly_eps_times_gradient_sign(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.1)
    x_adv = _perturbation(model, x, y, 0.1)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = seat_tf.losses.cross_entropy(y, model.classifier(xt, training=True))
    expected = np.clip(x + 0.1 * np.sign(tape.gradient(loss, xt).numpy()), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_trades_with_beta_zero_equals_clean_training(make_tiny_cnn, toy_data):
    x, y = toy_data
    a = make_tiny_cnn()
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    trades = seat_tf.TRADESModel(a, epsilon=0.1, beta=0.0)
    trades.compile(optimizer=keras.optimizers.SGD(0.1))
    trades.train_on_batch(x, y)
    b.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    b.train_on_batch(x, y)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-6)


def test_grad_align_cosine_is_one_for_aligned_gradients_and_regularizer_vanishes():
    a = tf.constant(np.random.default_rng(0).normal(size=(4, 3, 3, 1)), tf.float32)
    np.testing.assert_allclose(GradAlignModel.cosine(a, 2.5 * a).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(GradAlignModel.cosine(a, -a).numpy(), -1.0, atol=1e-6)


def test_grad_align_alignment_is_one_when_the_noise_vanishes(make_linear, toy_data):
    # As eps -> 0 the gradients at x and x + eta coincide: cos -> 1, so the regularizer -> 0.
    x, y = toy_data
    rng = np.random.default_rng(0)
    model = GradAlignModel(make_linear(rng.normal(size=(64, 3)), np.zeros(3), (8, 8, 1)), epsilon=1e-6, lam=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["grad_alignment"] == pytest.approx(1.0, abs=1e-4)


def test_grad_align_regularizer_changes_the_update(make_tiny_cnn, toy_data):
    x, y = toy_data
    updates = []
    for lam in (0.0, 5.0):
        model = GradAlignModel(make_tiny_cnn(), epsilon=0.1, lam=lam)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.train_on_batch(x, y)
        updates.append(model.classifier.get_weights()[0])
    assert np.abs(updates[0] - updates[1]).max() > 1e-6


def test_pgd_at_default_step_is_two_and_a_half_eps_over_steps(make_tiny_cnn):
    model = seat_tf.PGDATModel(make_tiny_cnn(), epsilon=0.1, steps=5)
    assert model.rel_step_size == pytest.approx(0.5)
    assert seat_tf.PGDATModel.from_config(model.get_config()).steps == 5
