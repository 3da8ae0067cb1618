"""Each baseline's own definition, by hand on a linear classifier (float64 NumPy references in
tests/closed_form.py): the attack's start, step size, number of steps and projection, and the
objective's value and weight gradient. Each test also checks that the plausible wrong
definitions give a different answer on its data, so it is not passing vacuously.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from tests import closed_form as cf
from tests.conftest import linear_classifier

SHAPE = (2, 2, 2)
K = 3
EPS = 0.1  # x in 0.5 +- 0.1: x +- 3 eps stays inside [0, 1], so only the tests that mean to clip do


def _problem(seed=0, batch=16, scale=2.0):
    return cf.linear_problem(SHAPE, K, seed, batch, scale)


def _model(cls, W, b, **kwargs):
    kwargs.setdefault("epsilon", EPS)
    model = cls(linear_classifier(W, b, SHAPE), val_attack=None, seed=5, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1))  # step_seed() reads optimizer.iterations
    return model


def _tensors(x, y):
    return tf.constant(x, tf.float32), tf.constant(y, tf.int32)


def _objective_and_gradient(model, x, y, x_adv):
    """The method's objective on (x, x_adv) after its clean pass, its logs, and d/d(W, b)."""
    x_t, y_t = _tensors(x, y)
    tape = tf.GradientTape()
    clean = model.compute_clean_pass(x_t, y_t, tape)
    with tape:
        loss, logs = model.objective(x_t, y_t, tf.constant(x_adv, tf.float32), clean)
    dW, db = tape.gradient(loss, model.classifier.trainable_variables)
    return loss, logs, dW, db


def _perturb(model, x, y, eps=EPS):
    x_t, y_t = _tensors(x, y)
    clean = model.compute_clean_pass(x_t, y_t, tf.GradientTape()) if model.clean_pass else None
    return model.perturb(x_t, y_t, tf.constant(eps, tf.float32), clean).numpy()


def _ce_ascent(W, b, y):
    """grad_x CE, refusing components too small for their sign to be reliable in float32."""

    def grad(x_adv):
        g = cf.ce_grad_x(W, b, x_adv, y)
        assert np.abs(g).min() > 1e-5
        return g

    return grad


def _assert_uniform(start, radius):
    """A start drawn uniformly from [-radius, radius] per pixel (128 draws)."""
    magnitude = np.abs(start)
    assert magnitude.max() <= radius * (1 + 1e-6)
    assert magnitude.max() > 0.9 * radius  # the whole ball, not a smaller one
    assert np.mean(np.isclose(magnitude, radius)) < 0.05  # not the corners
    assert abs(magnitude.mean() - radius / 2) < 0.1 * radius  # E|U(-r, r)| = r / 2
    assert 0.3 < np.mean(start > 0) < 0.7


# -- the signed-gradient family ---------------------------------------------------------------


def test_fgsm_at_is_one_step_of_eps_from_x(recorded_starts):
    W, b, x, y = _problem(seed=1)
    x_adv = _perturb(_model(seat_tf.FGSMATModel, W, b), x, y)
    assert all(np.all(s == 0) for s in recorded_starts)  # no random start
    expected = np.clip(x + EPS * np.sign(_ce_ascent(W, b, y)(x)), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_rs_fgsm_uniform_start_step_one_and_a_quarter_eps_projected(recorded_starts):
    W, b, x, y = _problem(seed=2)
    x_adv = _perturb(_model(seat_tf.RSFGSMModel, W, b), x, y)
    (start,) = recorded_starts
    _assert_uniform(start, EPS)
    ascent = _ce_ascent(W, b, y)
    expected = cf.signed_steps(ascent, x, start, EPS, 1.25 * EPS, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    for wrong in (cf.signed_steps(ascent, x, start, EPS, EPS, 1),  # step eps
                  cf.signed_steps(ascent, x, start, EPS, 1.25 * EPS, 1, project=False),
                  cf.signed_steps(ascent, x, 0 * start, EPS, 1.25 * EPS, 1)):  # zero start
        assert np.abs(wrong - expected).max() > 1e-3


def test_n_fgsm_noise_two_eps_step_eps_not_projected(recorded_starts):
    W, b, x, y = _problem(seed=3)
    x_adv = _perturb(_model(seat_tf.NFGSMModel, W, b), x, y)
    (start,) = recorded_starts
    _assert_uniform(start, 2 * EPS)
    ascent = _ce_ascent(W, b, y)
    expected = cf.signed_steps(ascent, x, start, EPS, EPS, 1, project=False)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    assert np.abs(x_adv - x).max() > 2 * EPS  # noise and step add up beyond the ball
    for wrong in (cf.signed_steps(ascent, x, start, EPS, EPS, 1),  # projected
                  cf.signed_steps(ascent, x, start, EPS, 2 * EPS, 1, project=False)):
        assert np.abs(wrong - expected).max() > 1e-3


def test_n_fgsm_clips_to_the_unit_box(recorded_starts):
    W, b, x, y = _problem(seed=4)
    x = x.copy()
    x[:, 0] = 0.02  # within 3 eps of the borders
    x[:, 1] = 0.99
    x_adv = _perturb(_model(seat_tf.NFGSMModel, W, b), x, y)
    expected = cf.signed_steps(_ce_ascent(W, b, y), x, recorded_starts[0], EPS, EPS, 1, project=False)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    assert x_adv.min() == 0.0 and x_adv.max() == 1.0


@pytest.mark.parametrize("steps", [3, 4])
def test_pgd_at_takes_k_projected_steps_of_two_and_a_half_eps_over_k(recorded_starts, steps):
    # Strong weights around balanced logits: the gradient's sign changes along the path, so
    # the iterates do not all end on a corner whatever the step size.
    W, _, x, y = _problem(seed=11, batch=32, scale=4.0)
    b = -0.5 * W.sum(0)
    x_adv = _perturb(_model(seat_tf.PGDATModel, W, b, steps=steps), x, y)
    (start,) = recorded_starts
    _assert_uniform(start, EPS)
    ascent = _ce_ascent(W, b, y)
    expected = cf.signed_steps(ascent, x, start, EPS, 2.5 * EPS / steps, steps)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    for wrong in (cf.signed_steps(ascent, x, start, EPS, 2.5 * EPS / steps, steps - 1),
                  cf.signed_steps(ascent, x, start, EPS, 2.0 * EPS / steps, steps),
                  cf.signed_steps(ascent, x, start, EPS, 0.25 * EPS, steps),
                  cf.signed_steps(ascent, x, start, EPS, 2.5 * EPS / steps, steps, project=False)):
        assert np.abs(wrong - expected).max() > 1e-3


@pytest.mark.parametrize("cls", [seat_tf.FGSMATModel, seat_tf.RSFGSMModel, seat_tf.NFGSMModel, seat_tf.PGDATModel])
def test_signed_gradient_methods_minimize_the_mean_adversarial_cross_entropy(cls):
    W, b, x, y = _problem(seed=6)
    x_adv = x + EPS * np.sign(np.random.default_rng(0).uniform(-1, 1, x.shape))
    model = _model(cls, W, b)
    x_t, y_t = _tensors(x, y)
    with tf.GradientTape() as tape:
        loss, logs = model.objective(x_t, y_t, tf.constant(x_adv, tf.float32), None)
    dW, db = tape.gradient(loss, model.classifier.trainable_variables)
    assert float(loss) == pytest.approx(cf.ce(W, b, x_adv, y).mean(), rel=1e-5)
    eW, eb = cf.weight_grad(x_adv, cf.ce_logit_grad(W, b, x_adv, y) / len(y))  # x'^T (p' - e_y) / B
    np.testing.assert_allclose(dW.numpy(), eW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db.numpy(), eb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["adv_logits"].numpy(), cf.logits(W, b, x_adv), rtol=1e-5, atol=1e-5)


# -- TRADES --------------------------------------------------------------------------------------


def kl_grad_z(p_logits, q_logits, direction="clean||adv"):
    """Gradient w.r.t. the adversarial logits of KL(p || q) (TRADES) or of KL(q || p)."""
    p, q = cf.softmax(p_logits), cf.softmax(q_logits)
    if direction == "clean||adv":
        return q - p
    a = cf.log_softmax(q_logits) - cf.log_softmax(p_logits)
    return q * (a - (q * a).sum(1, keepdims=True))


def test_trades_attack_maximizes_kl_clean_to_adv_from_a_small_gaussian_start(recorded_starts):
    W, _, x, y = _problem(seed=11, batch=32, scale=4.0)
    b = -0.5 * W.sum(0)  # balanced logits: the KL's gradient changes sign along the path
    eps = EPS
    model = _model(seat_tf.TRADESModel, W, b, epsilon=eps)  # defaults: 10 steps of eps / 4
    x_adv = _perturb(model, x, y, eps)
    (start,) = recorded_starts
    assert 0.0005 < start.std() < 0.002 and np.abs(start).max() < 0.01  # 0.001 N(0, 1)
    clean_logits = cf.logits(W, b, x)

    def ascent(direction):
        def grad(x_adv):
            g = (kl_grad_z(clean_logits, cf.logits(W, b, x_adv), direction) @ W.T).reshape(x.shape)
            assert np.abs(g).min() > 1e-7
            return g

        return grad

    expected = cf.signed_steps(ascent("clean||adv"), x, start, eps, 0.25 * eps, 10)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    for wrong in (cf.signed_steps(ascent("adv||clean"), x, start, eps, 0.25 * eps, 10),  # KL(f(x') || f(x))
                  cf.signed_steps(ascent("clean||adv"), x, start, eps, 0.25 * eps, 9),
                  cf.signed_steps(ascent("clean||adv"), x, start, eps, 0.2 * eps, 10)):
        assert np.abs(wrong - expected).max() > 1e-3


def trades_objective(W, b, x, y, x_adv, beta):
    return cf.ce(W, b, x, y).mean() + beta * cf.kl(cf.logits(W, b, x), cf.logits(W, b, x_adv)).mean()


def test_trades_objective_value_and_weight_gradient():
    """CE(f(x), y) + beta KL(f(x) || f(x')); both logits depend on the weights:
    d KL / d z = p * (a - p.a) with a = log p - log q, d KL / d z' = q - p."""
    W, b, x, y = _problem(seed=8, batch=8)
    x_adv = x + 0.2 * np.sign(np.random.default_rng(1).uniform(-1, 1, x.shape))
    beta = 3.0
    model = _model(seat_tf.TRADESModel, W, b, beta=beta)
    loss, logs, dW, db = _objective_and_gradient(model, x, y, x_adv)
    z, z_adv = cf.logits(W, b, x), cf.logits(W, b, x_adv)
    assert float(loss) == pytest.approx(trades_objective(W, b, x, y, x_adv, beta), rel=1e-5)
    np.testing.assert_allclose(logs["kl"].numpy(), cf.kl(z, z_adv), rtol=1e-4, atol=1e-6)
    p, q = cf.softmax(z), cf.softmax(z_adv)
    a = np.log(p) - np.log(q)
    n = len(y)
    clean_dz = cf.ce_logit_grad(W, b, x, y) / n + beta * p * (a - (p * a).sum(1, keepdims=True)) / n
    adv_dz = beta * (q - p) / n
    eW = cf.flat(x).T @ clean_dz + cf.flat(x_adv).T @ adv_dz
    eb = clean_dz.sum(0) + adv_dz.sum(0)
    np.testing.assert_allclose(dW.numpy(), eW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db.numpy(), eb, rtol=1e-4, atol=1e-6)
    nW, nb = cf.numeric_gradient(lambda w, c: trades_objective(w, c, x, y, x_adv, beta), [W, b])
    np.testing.assert_allclose(eW, nW, rtol=1e-5, atol=1e-7)
    # The wrong objectives have other values here.
    wrong = [cf.ce(W, b, x, y).mean() + beta * cf.kl(z_adv, z).mean(),  # KL(f(x') || f(x))
             trades_objective(W, b, x, y, x_adv, 1.0),  # beta ignored
             cf.ce(W, b, x_adv, y).mean() + beta * cf.kl(z, z_adv).mean()]  # CE on x'
    assert all(abs(w - trades_objective(W, b, x, y, x_adv, beta)) > 1e-3 for w in wrong)


# -- GradAlign -------------------------------------------------------------------------------------


def grad_align_objective(W, b, x, y, x_adv, eta, lam):
    """mean CE(x') + lam * mean(1 - cos(grad_x CE(x), grad_x CE(clip(x + eta))))."""
    g = cf.flat(cf.ce_grad_x(W, b, x, y))
    g_noisy = cf.flat(cf.ce_grad_x(W, b, np.clip(x + eta, 0, 1), y))
    cos = (g * g_noisy).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(g_noisy, axis=1))
    return cf.ce(W, b, x_adv, y).mean() + lam * (1 - cos).mean(), cos


def test_grad_align_attack_is_fgsm_from_x(recorded_starts):
    W, b, x, y = _problem(seed=9)
    x_adv = _perturb(_model(seat_tf.GradAlignModel, W, b), x, y)
    np.testing.assert_allclose(x_adv, np.clip(x + EPS * np.sign(_ce_ascent(W, b, y)(x)), 0, 1), atol=1e-6)


def test_grad_align_regularizer_value_and_gradient(recorded_starts):
    W, _, x, y = _problem(seed=10, batch=8, scale=3.0)
    b = -0.5 * W.sum(0)  # balanced logits around x: the softmax is far from saturated
    eps, lam = 0.3, 2.0
    x_adv = x + eps * np.sign(np.random.default_rng(2).uniform(-1, 1, x.shape))
    model = _model(seat_tf.GradAlignModel, W, b, epsilon=eps, lam=lam)
    loss, logs, dW, db = _objective_and_gradient(model, x, y, x_adv)
    (eta,) = recorded_starts
    _assert_uniform(eta, eps)
    value, cos = grad_align_objective(W, b, x, y, x_adv, eta, lam)
    assert float(loss) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(logs["grad_alignment"].numpy(), cos, rtol=1e-4, atol=1e-5)
    assert cos.min() < 0.95  # the noise misaligns the gradients: the regularizer is not ~0
    nW, nb = cf.numeric_gradient(lambda w, c: grad_align_objective(w, c, x, y, x_adv, eta, lam)[0], [W, b])
    np.testing.assert_allclose(dW.numpy(), nW, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(db.numpy(), nb, rtol=1e-3, atol=1e-5)
    # The regularizer's own gradient is large enough that a wrong sign or weight shows.
    rW, _ = cf.numeric_gradient(lambda w, c: grad_align_objective(w, c, x, y, x_adv, eta, lam)[0]
                                - cf.ce(w, c, x_adv, y).mean(), [W, b])
    assert np.abs(rW).max() > 1e-2
    wrong = [cf.ce(W, b, x_adv, y).mean() + lam * (1 + cos).mean(),  # cos sign flipped
             grad_align_objective(W, b, x, y, x_adv, eta, 1.0)[0],  # lam ignored
             grad_align_objective(W, b, x, y, x_adv, 0 * eta, lam)[0]]  # no noise
    assert all(abs(w - value) > 1e-3 for w in wrong)
