import numpy as np
import pytest
import tensorflow as tf

from seat_tf import attacks, losses


def _linear_setup(make_linear, num_classes=2, dim=(4, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    d = int(np.prod(dim))
    weights = rng.normal(size=(d, num_classes)).astype(np.float32)
    bias = rng.normal(size=num_classes).astype(np.float32)
    model = make_linear(weights, bias, dim)
    x = rng.uniform(0.3, 0.7, size=(8,) + dim).astype(np.float32)  # interior: eps=0.1 never clips
    y = rng.integers(0, num_classes, 8).astype(np.int32)
    return model, weights, bias, x, y


def test_fgsm_equals_closed_form_on_linear_model(make_linear):
    model, w, b, x, y = _linear_setup(make_linear, num_classes=3)
    eps = 0.1
    x_adv = attacks.fgsm(model, x, y, eps).numpy()
    logits = x.reshape(8, -1) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y]) @ w.T  # d CE / d x for a linear model
    expected = np.clip(x + eps * np.sign(grad).reshape(x.shape), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_pgd_reaches_the_vertex_optimum_of_a_binary_linear_model(make_linear):
    # With two classes the margin is linear in x: the optimum over the eps-box is the vertex
    # x + eps * sign(w_other - w_true), reached by PGD from any start.
    model, w, b, x, y = _linear_setup(make_linear, num_classes=2)
    eps = 0.1
    x_adv = attacks.pgd(model, x, y, eps, steps=10, rel_step_size=0.25, loss="margin", seed=1).numpy()
    direction = np.where(y[:, None] == 0, (w[:, 1] - w[:, 0])[None], (w[:, 0] - w[:, 1])[None])
    expected = x + eps * np.sign(direction).reshape(x.shape)
    np.testing.assert_allclose(x_adv, expected, atol=1e-5)


@pytest.mark.parametrize("init", ["zero", "uniform", "corner"])
def test_perturbation_stays_in_eps_ball_and_unit_box(make_tiny_cnn, toy_data, init):
    model = make_tiny_cnn()
    x, y = toy_data
    x = np.concatenate([np.zeros_like(x[:4]), np.ones_like(x[:4]), x[:8]])  # edges of the box
    y = np.concatenate([y[:4], y[:4], y[:8]])
    eps = 0.2
    x_adv = attacks.linf_attack(
        lambda z: losses.cross_entropy(y, model(z)), x, eps=eps, step_size=0.15, steps=3, init=init, seed=3
    ).numpy()
    assert np.all(np.abs(x_adv - x) <= eps + 1e-6)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_unprojected_attack_can_leave_the_ball_but_not_the_box(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    x_adv = attacks.linf_attack(
        lambda z: losses.cross_entropy(y, model(z)), x, eps=0.1, step_size=0.1, init="uniform", init_radius=0.2,
        project_to_ball=False, seed=0,
    ).numpy()
    assert np.abs(x_adv - x).max() > 0.1 + 1e-3
    assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_random_starts_are_reproducible_and_seed_dependent(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    run = lambda seed: attacks.pgd(model, x, y, 0.1, steps=2, seed=seed).numpy()  # noqa: E731
    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_restarts_keep_the_worst_case_per_example(make_tiny_cnn, toy_data):
    # Restart 0 of a multi-restart run is the single run with the same seed, so the kept
    # result can only be worse for the model: fooled examples stay fooled, and (without a
    # success test) the objective per example is at least as high.
    model = make_tiny_cnn()
    x, y = toy_data
    objective = lambda z: losses.cross_entropy(y, model(z))  # noqa: E731
    kwargs = dict(eps=0.1, step_size=0.05, steps=1, init="uniform", seed=5)
    single = attacks.linf_attack(objective, x, **kwargs)
    many = attacks.linf_attack(objective, x, restarts=4, **kwargs)
    assert np.all(objective(many).numpy() >= objective(single).numpy() - 1e-6)
    assert np.any(objective(many).numpy() > objective(single).numpy() + 1e-6)
    fooled = lambda z: np.argmax(model(z).numpy(), 1) != y  # noqa: E731
    with_success = attacks.linf_attack(objective, x, restarts=4, success=attacks.misclassified(model, y), **kwargs)
    assert np.all(fooled(with_success) >= fooled(single))


def test_large_eps_drives_linear_model_accuracy_to_zero(make_linear):
    model, *_ = _linear_setup(make_linear, num_classes=2, seed=7)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)  # all correct before the attack
    x_adv = attacks.pgd(model, x, y, eps=1.0, steps=20, rel_step_size=0.25, seed=0)
    assert np.mean(np.argmax(model(x_adv).numpy(), 1) == y) == 0.0


def test_more_pgd_steps_never_help_the_model(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    accuracy = lambda x_adv: np.mean(np.argmax(model(x_adv).numpy(), 1) == y)  # noqa: E731
    fgsm_acc = accuracy(attacks.fgsm(model, x, y, 0.1))
    pgd5 = accuracy(attacks.pgd(model, x, y, 0.1, steps=5, seed=0))
    pgd20 = accuracy(attacks.pgd(model, x, y, 0.1, steps=20, seed=0))
    assert pgd20 <= pgd5 + 1.0 / len(y) and pgd5 <= fgsm_acc + 1.0 / len(y)


def test_momentum_attack_runs_and_respects_budget(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    x_adv = attacks.get_attack("mifgsm5")(model, x, y, 0.1).numpy()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6


def test_momentum_steps_follow_mi_fgsm():
    """MI-FGSM (Dong et al., 2018): v <- mu v + g / |g|_1, x <- P(x + step sign(v)), against a
    NumPy replay on the concave quadratic f(z) = -sum(h (z - c)^2) with c inside the ball,
    where the gradient turns around at c: with mu = 1 the velocity keeps the iterate going
    past c for a while, unlike plain signed steps."""
    spec = attacks.get_attack("mifgsm5")
    assert (spec.momentum, spec.init, spec.steps, spec.step_for(0.1)) == (1.0, "zero", 5, pytest.approx(0.02))
    rng = np.random.default_rng(3)
    x = rng.uniform(0.3, 0.7, (8, 3, 3, 1)).astype(np.float32)
    h = rng.uniform(0.5, 2.0, x.shape)
    c = x + rng.uniform(-0.08, 0.08, x.shape)
    eps, step, steps = 0.1, 0.03, 8
    h_t, c_t = tf.constant(h, tf.float32), tf.constant(c, tf.float32)
    objective = lambda z: -tf.reduce_sum(h_t * tf.square(z - c_t), axis=[1, 2, 3])  # noqa: E731
    x_adv = attacks.linf_attack(objective, x, eps=eps, step_size=step, steps=steps, momentum=1.0).numpy()
    z, velocity = x.astype(np.float64), np.zeros(x.shape)
    for _ in range(steps):
        g = -2 * h * (z - c)
        velocity = velocity + g / np.abs(g).sum(axis=(1, 2, 3), keepdims=True)
        z = np.clip(np.clip(z + step * np.sign(velocity), x - eps, x + eps), 0, 1)
    np.testing.assert_allclose(x_adv, z, atol=1e-5)
    plain = attacks.linf_attack(objective, x, eps=eps, step_size=step, steps=steps).numpy()
    assert np.abs(plain - z).max() > step / 2  # the momentum made a difference


def test_get_attack_parses_names_and_rejects_bad_ones():
    pgd = attacks.get_attack("pgd50x10")
    assert (pgd.steps, pgd.restarts, pgd.loss) == (50, 10, "ce")
    assert attacks.get_attack("cw20").loss == "margin"
    fgsm = attacks.get_attack("fgsm")
    assert (fgsm.steps, fgsm.init, fgsm.step_for(0.1)) == (1, "zero", 0.1)
    assert attacks.get_attack({"steps": 3, "loss": "dlr"}).steps == 3
    for bad in ["pgd", "bim10", "pgd0"]:
        with pytest.raises(ValueError):
            attacks.get_attack(bad)
    with pytest.raises(ValueError, match="init"):
        attacks.LinfPGD(init="gaussian")


def test_attack_works_inside_tf_function(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    eager = attacks.pgd(model, x, y, 0.1, steps=3, seed=2).numpy()
    graph = tf.function(lambda a, b: attacks.pgd(model, a, b, 0.1, steps=3, seed=2))(x, y).numpy()
    np.testing.assert_allclose(eager, graph, atol=1e-6)


@pytest.mark.parametrize("steps, momentum", [(1, 0.0), (3, 0.0), (3, 1.0)])
def test_initial_gradient_shortcut_gives_the_same_attack(make_tiny_cnn, toy_data, steps, momentum):
    """A caller that already has the gradient at x (the clean pass) gets the same result."""
    model = make_tiny_cnn()
    x, y = toy_data
    objective = lambda z: losses.margin_loss(y, model(z))  # noqa: E731
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = objective(xt)
    grad = tape.gradient(value, xt)
    kwargs = dict(eps=0.1, step_size=0.04, steps=steps, init="zero", momentum=momentum)
    np.testing.assert_allclose(
        attacks.linf_attack(objective, x, initial_gradient=grad, **kwargs).numpy(),
        attacks.linf_attack(objective, x, **kwargs).numpy(),
        atol=1e-6,
    )
