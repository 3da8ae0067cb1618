"""FAB-T: its L-inf projection against a linear program, its result against the closed-form
minimal perturbation of linear classifiers, the eps rule, budgets, tracing and orderings."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from seat_tf import attacks
from tests.conftest import tiny_cnn


def _minimal_linf_step(point, normal, offset):
    """min ||delta||_inf s.t. <normal, point + delta> = offset, point + delta in [0, 1], as a
    linear program over (delta, r); None if infeasible."""
    d = point.size
    cost = np.r_[np.zeros(d), 1.0]
    eye = np.eye(d)
    # delta - r <= 0 and -delta - r <= 0.
    a_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
    bounds = [(-p, 1.0 - p) for p in point] + [(0, None)]
    result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[normal, 0.0][None],
                     b_eq=[offset - normal @ point], bounds=bounds, method="highs")
    return result.fun if result.status == 0 else None


def test_projection_is_the_minimal_linf_step_onto_hyperplane_and_box():
    rng = np.random.default_rng(0)
    batch, d = 12, 10
    points = rng.uniform(0, 1, (batch, d))
    points[:, :3] = rng.integers(0, 2, (batch, 3))  # pixels on the box's faces: the box binds
    normal = rng.normal(size=(batch, d))
    normal[:, 3] = 0.0  # a pixel the boundary ignores
    # Gaps from tiny to beyond the box's reach (the last rows), both signs.
    offset = (normal * points).sum(1) + rng.choice([-1, 1], batch) * np.linspace(0.01, 6.0, batch)
    delta = attacks.project_to_hyperplane(*(tf.constant(a, tf.float32) for a in (points, normal, offset))).numpy()
    moved = points + delta
    assert np.all((moved >= -1e-6) & (moved <= 1 + 1e-6))
    assert np.all(delta[:, 3] == 0)
    feasible = 0
    for i in range(batch):
        optimum = _minimal_linf_step(points[i], normal[i], offset[i])
        if optimum is None:  # out of reach: the box corner closest to the hyperplane
            toward = np.sign(normal[i]) * np.sign(offset[i] - normal[i] @ points[i])
            np.testing.assert_allclose(moved[i], np.where(toward > 0, 1.0, np.where(toward < 0, 0.0, points[i])),
                                       atol=1e-6)
            continue
        feasible += 1
        np.testing.assert_allclose(normal[i] @ moved[i], offset[i], rtol=1e-4, atol=1e-4)
        assert np.abs(delta[i]).max() == pytest.approx(optimum, rel=1e-4, abs=1e-6)
    assert 3 <= feasible < batch  # both cases were exercised


def _linear_problem(make_linear, classes, n, seed):
    """A random affine classifier on 4x4 images near 0.5 and the labels it predicts, so every
    example starts correctly classified; and, per example and wrong class t, the closed-form
    minimal L-inf distance to t's side, margin_t / ||w_y - w_t||_1 (the box never binds:
    the test checks that premise)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(16, classes)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    x = rng.uniform(0.45, 0.55, (n, 4, 4, 1)).astype(np.float32)
    z = x.reshape(n, -1).astype(np.float64) @ w + b
    y = z.argmax(1).astype(np.int32)
    rows = np.arange(n)
    minimum = np.full((n, classes), np.inf)
    for t in range(classes):
        other = t != y
        diff = np.abs(w[:, y] - w[:, [t]]).sum(0)
        minimum[other, t] = (z[rows, y] - z[:, t])[other] / diff[other]
    assert np.all(minimum.min(1) * 1.05 < 0.45)  # x +- 1.05 r* stays inside [0, 1]
    return make_linear(w, b, (4, 4, 1)), x, y, minimum


def _linf(x_adv, x):
    return np.abs(np.asarray(x_adv) - x).reshape(len(x), -1).max(1)


def _compiled(attack, model):
    """attack(model, x, y, eps, seed) as one graph with eps and seed as inputs, as the
    evaluation Runner runs it (eagerly, each of FAB's steps would be Python-speed)."""
    return tf.function(lambda x, y, eps, seed=tf.constant([0, 0]): attack(model, x, y, eps, seed=seed))


def test_fab_finds_the_closed_form_minimal_perturbation_of_a_binary_linear_model(make_linear):
    model, x, y, minimum = _linear_problem(make_linear, 2, 16, seed=1)
    r_star = minimum.min(1)
    x_adv = _compiled(attacks.FAB(), model)(x, y, 1.0).numpy()
    norms = _linf(x_adv, x)
    assert np.all(np.argmax(model(x_adv).numpy(), 1) != y)
    # Never closer than the minimum (impossible), and within 2% of it (eta = 1.05 overshoots).
    assert np.all(norms >= r_star * (1 - 1e-4))
    assert np.all(norms <= r_star * 1.02)


def test_fab_breaks_exactly_the_examples_whose_minimum_is_within_eps(make_linear):
    model, x, y, minimum = _linear_problem(make_linear, 4, 48, seed=2)
    r_star = minimum.min(1)  # misclassified toward any class: the nearest boundary
    fab = _compiled(attacks.get_attack("fab-t"), model)
    for eps in np.quantile(r_star, [0.25, 0.5, 0.75]).astype(np.float32):
        x_adv = fab(x, y, tf.constant(eps)).numpy()
        broken = np.argmax(model(x_adv).numpy(), 1) != y
        assert np.all(_linf(x_adv, x) <= eps + 1e-6) and np.all((x_adv >= 0) & (x_adv <= 1))
        assert not np.any(broken & (r_star > eps + 1e-6))  # beyond the minimum: impossible
        within = r_star * 1.02 <= eps
        assert within.sum() >= 5 and np.all(broken[within]), eps  # FAB-T finds every nearby boundary
        np.testing.assert_array_equal(x_adv[~broken], x[~broken])  # unbroken: x itself


def test_fab_t_goes_on_to_less_likely_targets_when_their_boundary_is_nearer(make_linear):
    # Class 0 scores 0; class 1 scores x_0 - 0.6 (the runner-up, -0.1 at x = 0.5, but only one
    # pixel moves it: 0.1 away); class 2 scores sum(x) - 8.4 (-0.4, but all 16 pixels move it:
    # 0.4 / 16 = 0.025 away). Only the second target breaks the examples at eps 0.05.
    rng = np.random.default_rng(4)
    x = (0.5 + rng.uniform(-0.005, 0.005, (8, 4, 4, 1))).astype(np.float32)
    w = np.zeros((16, 3), np.float32)
    w[0, 1], w[:, 2] = 1.0, 1.0
    model = make_linear(w, np.array([0.0, -0.6, -8.4], np.float32), (4, 4, 1))
    y = np.zeros(8, np.int32)
    assert np.all(np.argsort(-model(x).numpy(), 1)[:, 1] == 1)
    r_star = (8.4 - x.reshape(8, -1).sum(1)) / 16
    x_adv = _compiled(attacks.FAB(), model)(x, y, 0.05).numpy()
    assert np.all(np.argmax(model(x_adv).numpy(), 1) == 2)
    assert np.all((_linf(x_adv, x) >= r_star * (1 - 1e-4)) & (_linf(x_adv, x) <= r_star * 1.02))
    only_runner_up = _compiled(attacks.FAB(targets=1), model)(x, y, 0.05).numpy()
    np.testing.assert_array_equal(only_runner_up, x)


@pytest.mark.parametrize("steps", [1, 2])
def test_fab_first_iterations_on_an_affine_boundary_by_hand(make_linear, steps):
    """Worked by hand for a binary affine classifier from x well inside the box: the minimal
    step onto the boundary is delta = -r sign(w_y - w_t), r = g(x) / |w_y - w_t|_1. Step 1
    starts at x, so both projections are delta and x_1 = x + eta delta (fooled; pulled back to
    x + beta eta delta = x + s delta). Step 2: the iterate is (1 - s) r from the boundary and
    r from x, so alpha = (1 - s) / (2 - s) (below alpha_max) and
    x_2 = x + [(1 - alpha)(s + eta (1 - s)) + alpha eta] delta, fooled and closer than x_1."""
    model, x, y, minimum = _linear_problem(make_linear, 2, 8, seed=6)
    fab = attacks.FAB(steps=steps)
    eta, beta = fab.eta, fab.beta
    w = model.get_weights()[0].astype(np.float64)
    sign = np.sign(w[:, y] - w[:, 1 - y]).T.reshape(x.shape)
    delta = -minimum.min(1).reshape(-1, 1, 1, 1) * sign
    s = beta * eta
    alpha = (1 - s) / (2 - s)
    assert alpha < fab.alpha_max
    scale = eta if steps == 1 else (1 - alpha) * (s + eta * (1 - s)) + alpha * eta
    x_adv = _compiled(fab, model)(x, y, 1.0).numpy()
    np.testing.assert_allclose(x_adv, x + scale * delta, atol=2e-6)


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN fit to the 3-class toy images of conftest (class k brightens a row band by
    0.6; its minimal L-inf perturbations lie between about 0.2 and 0.3), with its own
    predictions as labels so every example starts correctly classified."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 96).astype(np.int32)
    x = rng.uniform(0.0, 0.3, (96, 8, 8, 1)).astype(np.float32)
    for k in range(3):
        x[y == k, 2 * k + 1 : 2 * k + 3, :, 0] += 0.6
    model = tiny_cnn()
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    predicted = np.argmax(model(x).numpy(), 1).astype(np.int32)
    assert (predicted == y).mean() > 0.9
    return model, x, predicted


def test_fab_traces_with_eps_and_seed_as_graph_inputs_and_stays_in_budget(trained):
    model, x, y = trained
    fab = attacks.get_attack("fab-t10x2")  # two restarts: the second starts at random
    assert hash(fab) == hash(attacks.get_attack("fab-t10x2"))  # the Runner caches traces by attack
    signature = [tf.TensorSpec([None, 8, 8, 1], tf.float32), tf.TensorSpec([None], tf.int32),
                 tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int32)]
    run = tf.function(lambda a, b, eps, seed: fab(model, a, b, eps, seed=seed), input_signature=signature)
    seed = tf.constant([3, 1])
    for eps in (0.1, 0.25):
        x_adv = run(x, y, eps, seed).numpy()
        assert np.all(_linf(x_adv, x) <= eps + 1e-6) and np.all((x_adv >= 0) & (x_adv <= 1))
        np.testing.assert_array_equal(x_adv, run(x, y, eps, seed).numpy())
    assert 0.2 < (np.argmax(model(x_adv).numpy(), 1) != y).mean() < 0.8


def test_larger_eps_and_more_targets_only_break_more(trained):
    """FAB-T with one restart is deterministic and eps only thresholds its result, so what it
    breaks at eps it breaks at any larger eps; and its first target's run is the same with
    one target or with all of them."""
    model, x, y = trained

    def breaker(attack):
        run = _compiled(attack, model)
        return lambda eps: np.argmax(model(run(x, y, tf.constant(eps))).numpy(), 1) != y

    fab = breaker(attacks.FAB(steps=20))
    small, middle, large = fab(0.24), fab(0.25), fab(0.27)
    assert np.all(middle[small]) and np.all(large[middle]) and large.sum() > small.sum() > 0
    assert np.all(middle[breaker(attacks.FAB(steps=20, targets=1))(0.25)])


def test_fab_names_budgets_and_bad_configs():
    fab = attacks.get_attack("fab-t")
    assert fab == attacks.FAB(name="fab-t")
    assert (fab.steps, fab.targets, fab.restarts, fab.alpha_max, fab.eta, fab.beta) == (100, 9, 1, 0.1, 1.05, 0.9)
    assert (attacks.get_attack("fab-t50x3").steps, attacks.get_attack("fab-t50x3").restarts) == (50, 3)
    for bad in (dict(targets=0), dict(steps=0), dict(beta=1.0), dict(alpha_max=1.5)):
        with pytest.raises(ValueError):
            attacks.FAB(**bad)
