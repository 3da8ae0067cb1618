"""APGD, targeted PGD, Square, DeepFool, CW-L2 and composites: closed forms on linear models,
the APGD schedule, budgets, determinism and attack names."""

import numpy as np
import pytest
import tensorflow as tf

from seat_tf import attacks, losses


def _linear(make_linear, num_classes, seed=0, dim=(4, 4, 1), n=8):
    rng = np.random.default_rng(seed)
    d = int(np.prod(dim))
    w = rng.normal(size=(d, num_classes)).astype(np.float32)
    b = rng.normal(size=num_classes).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(n,) + dim).astype(np.float32)  # interior: small eps never clips
    return make_linear(w, b, dim), w, b, x


def test_apgd_checkpoints_follow_croce_and_hein():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 -> w_j = ceil(p_j * N)
    assert attacks.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]


def test_apgd_reaches_the_vertex_optimum_of_a_binary_linear_model(make_linear):
    # CE of a binary linear model is increasing in the linear margin: the maximizer over the
    # eps-box is the vertex x + eps * sign(w_other - w_true).
    model, w, _, x = _linear(make_linear, 2)
    y = np.array([0, 1] * 4, np.int32)
    x_adv = attacks.APGD(steps=10, loss="ce")(model, x, y, 0.1, seed=3).numpy()
    direction = np.where(y[:, None] == 0, (w[:, 1] - w[:, 0])[None], (w[:, 0] - w[:, 1])[None])
    np.testing.assert_allclose(x_adv, x + 0.1 * np.sign(direction).reshape(x.shape), atol=1e-5)


def test_apgd_step_rule_shrinks_the_step_where_fixed_steps_oscillate():
    # Maximize -||x' - c||^2 with c strictly inside the ball: signed steps of fixed size 2 eps
    # jump between corners, while APGD halves its step at stalled checkpoints and closes in on c.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.4, 0.6, (4, 6, 6, 1)).astype(np.float32)
    c = x + rng.uniform(-0.1, 0.1, x.shape).astype(np.float32)
    objective = lambda z: -tf.reduce_sum(tf.square(z - c), axis=[1, 2, 3])  # noqa: E731
    common = dict(eps=0.3, steps=100, init="uniform", seed=1, keep_best=True)
    apgd = attacks.linf_attack(objective, x, step_rule=attacks.APGDStep(0.3, 100), **common).numpy()
    fixed = attacks.linf_attack(objective, x, step_size=0.6, **common).numpy()
    assert np.abs(apgd - c).max() < 0.02
    assert np.abs(fixed - c).max() > 0.15


def _apgd_reference(value_grad, x, start, eps, steps, checkpoints, rho=0.75, alpha=0.75):
    """APGD (Croce & Hein, 2020, Algorithm 1) in float64 NumPy, per example, written from the
    paper: eta starts at 2 eps; at each checkpoint w_j it is halved, and the iterate goes back
    to the best point, which replaces x^(k+1), so the next momentum is x_max - x^(k), where fewer than
    rho (w_j - w_{j-1}) of the steps since w_{j-1} increased f, or where eta was not halved at
    w_{j-1} and the best value has not improved since. Returns the best of all iterates."""
    def project(v):
        return np.clip(np.clip(v, x - eps, x + eps), 0.0, 1.0)

    shape = (-1,) + (1,) * (x.ndim - 1)
    x_k = project(start)
    x_prev = x_k.copy()
    eta = np.full(len(x), 2.0 * eps)
    f_max, x_max, g_max = np.full(len(x), -np.inf), x_k.copy(), np.zeros_like(x)
    best_f, best_x = np.full(len(x), -np.inf), x_k.copy()
    f_prev, increases = None, np.zeros(len(x))
    last_w, reduced_last, f_max_at_last = 0, np.zeros(len(x), bool), None
    for k in range(steps):
        f, g = value_grad(x_k)
        better = f > best_f
        best_f, best_x = np.where(better, f, best_f), np.where(better.reshape(shape), x_k, best_x)
        up = f > f_max
        x_max, g_max = np.where(up.reshape(shape), x_k, x_max), np.where(up.reshape(shape), g, g_max)
        f_max = np.where(up, f, f_max)
        if f_prev is not None:
            increases += f > f_prev
        f_prev = f
        if k == 0:
            f_max_at_last = f_max.copy()
        if k in checkpoints:
            reduce = (increases < rho * (k - last_w)) | (~reduced_last & (f_max <= f_max_at_last))
            eta = np.where(reduce, eta / 2, eta)
            back = reduce.reshape(shape)
            x_k, g = np.where(back, x_max, x_k), np.where(back, g_max, g)
            reduced_last, f_max_at_last, increases, last_w = reduce, f_max.copy(), np.zeros(len(x)), k
        a = 1.0 if k == 0 else alpha
        z = project(x_k + eta.reshape(shape) * np.sign(g))
        x_prev, x_k = x_k, project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
    f, _ = value_grad(x_k)
    return np.where((f > best_f).reshape(shape), x_k, best_x)


def test_apgd_step_rule_follows_algorithm_1_step_by_step(recorded_starts):
    """The whole APGD run (step size, checkpoints, momentum, restarts from the best point,
    best-iterate output) against the NumPy reference above, on concave quadratics
    f(z) = -sum(h (z - c)^2): centres c inside the ball make the signed steps oscillate (eta
    halves), centres outside it make f stall on the ball's face (the other condition), and
    images near the box's faces make the clip bind."""
    rng = np.random.default_rng(11)
    n, shape, eps, steps = 16, (3, 3, 1), 0.3, 20
    checkpoints = [5, 9, 12, 14, 16, 18, 19]  # ceil(p_j * 20) for p = .22, .41, .57, .70, .80, .87, .93
    assert attacks.apgd_checkpoints(steps) == checkpoints
    x = rng.uniform(0.05, 0.95, (n,) + shape).astype(np.float32)
    h = rng.uniform(0.5, 2.0, (n,) + shape)
    c = x + rng.uniform(-1.0, 1.0, (n, 1, 1, 1)) * rng.uniform(0.0, 0.6, (n,) + shape)
    consts = [tf.constant(a, tf.float32) for a in (h, c)]
    objective = lambda z: -tf.reduce_sum(consts[0] * tf.square(z - consts[1]), axis=[1, 2, 3])  # noqa: E731
    x_adv = attacks.linf_attack(objective, x, eps=eps, steps=steps, init="uniform", seed=2,
                                step_rule=attacks.APGDStep(eps, steps), keep_best=True).numpy()
    (start,) = recorded_starts
    value_grad = lambda z: (-np.sum(h * (z - c) ** 2, axis=(1, 2, 3)), -2 * h * (z - c))  # noqa: E731
    x = x.astype(np.float64)
    expected = _apgd_reference(value_grad, x, x + start, eps, steps, checkpoints)
    np.testing.assert_allclose(x_adv, expected, atol=1e-5)


def test_keep_best_returns_the_worst_iterate_for_the_model(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    objective = lambda z: losses.cross_entropy(y, model(z))  # noqa: E731
    kwargs = dict(eps=0.2, step_size=0.15, steps=6, init="uniform", seed=4)
    last = attacks.linf_attack(objective, x, **kwargs)
    best = attacks.linf_attack(objective, x, keep_best=True, **kwargs)
    assert np.all(objective(best).numpy() >= objective(last).numpy() - 1e-6)
    assert np.abs(best.numpy() - x).max() <= 0.2 + 1e-6


@pytest.mark.parametrize("reachable", [1, 3])
def test_apgd_t_breaks_toward_the_one_target_within_reach(make_linear, reachable):
    """Four classes on 4x4 images at 0.5 +- 0.005, ranked 0 > 1 > 2 > 3 there: z_0 = 0,
    z_1 = x_0 - b_1 (one pixel), z_2 = x_1 - 0.65 and z_3 = a sum of pixels - 8.5. Worked by
    hand at eps 0.05, exactly one class can overtake z_0: the runner-up (b_1 = 0.52) or the
    least likely class (b_1 = 0.6, z_3 over all 16 pixels). APGD-T tries the targets in turn
    and keeps any success per example, so every example must end in that class: a target mixed
    up, the last target skipped or a later failure overwriting a success all show."""
    rng = np.random.default_rng(5)
    x = (0.5 + rng.uniform(-0.005, 0.005, (8, 4, 4, 1))).astype(np.float32)
    w = np.zeros((16, 4), np.float32)
    w[0, 1], w[1, 2] = 1.0, 1.0
    if reachable == 1:  # z_1 = x_0 - 0.52 reaches +0.03; z_3 (pixels 2..15) - 8.5 reaches -0.8
        w[2:, 3], b = 1.0, np.array([0.0, -0.52, -0.65, -8.5], np.float32)
    else:  # z_1 = x_0 - 0.6 reaches -0.05 only; z_3 = sum(x) - 8.5 reaches +0.3
        w[:, 3], b = 1.0, np.array([0.0, -0.6, -0.65, -8.5], np.float32)
    model = make_linear(w, b, (4, 4, 1))
    y = np.zeros(8, np.int32)
    assert np.all(np.argsort(-model(x).numpy(), 1) == [0, 1, 2, 3])  # class 3 is the least likely
    x_adv = attacks.APGD(steps=10, loss="dlr", targets=9)(model, x, y, 0.05, seed=0).numpy()
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6
    np.testing.assert_array_equal(np.argmax(model(x_adv).numpy(), 1), reachable)


def _block_classifier(make_linear, num_classes=4):
    """Class k scores the mean of pixel block k minus the others: with the whole box in reach,
    any class can be made the prediction (fill its block, empty the others)."""
    dim = (4, 4, 1)
    blocks = np.arange(16).reshape(16) // 4  # four blocks of four pixels
    w = np.where(blocks[:, None] == np.arange(num_classes)[None], 1.0, -1.0 / 3).astype(np.float32)
    return make_linear(w, np.zeros(num_classes, np.float32), dim)


def test_targeted_pgd_reaches_least_likely_and_random_targets(make_linear):
    model = _block_classifier(make_linear)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, (32, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)
    least_likely = np.argmin(model(x).numpy(), 1)
    spec = attacks.get_attack("targeted_ll_pgd20")
    assert spec.target == "least_likely"
    x_adv = spec(model, x, y, 1.0, seed=0)
    np.testing.assert_array_equal(np.argmax(model(x_adv).numpy(), 1), least_likely)

    targets = attacks.choose_targets(model(x), y, "random", seed=5).numpy()
    assert np.all(targets != y) and len(set(targets)) > 1
    np.testing.assert_array_equal(targets, attacks.choose_targets(model(x), y, "random", seed=5).numpy())
    x_adv = attacks.get_attack("targeted_pgd20")(model, x, y, 1.0, seed=5)
    np.testing.assert_array_equal(np.argmax(model(x_adv).numpy(), 1), targets)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_deepfool_perturbation_equals_distance_to_the_boundary(make_linear, num_classes):
    # Affine classifier: the distance to the class region's boundary is min_k |f_k| / ||w_k||
    # with f_k = z_k - z_y and w_k = w[:, k] - w[:, y]; DeepFool (no overshoot) steps onto it.
    model, w, b, x = _linear(make_linear, num_classes, seed=1, n=16)
    x = 0.5 + 0.02 * (x - 0.5)  # close to the boundaries so the step never leaves [0, 1]
    logits = x.reshape(len(x), -1) @ w + b
    y = np.argmax(logits, 1).astype(np.int32)
    distances = np.full(len(x), np.inf)
    for k in range(num_classes):
        wk = w[:, k][None] - w[:, y].T  # [N, D]; zero where k == y
        fk = logits[:, k] - logits[np.arange(len(x)), y]
        dk = np.abs(fk) / np.maximum(np.linalg.norm(wk, axis=1), 1e-12)
        distances = np.where(k != y, np.minimum(distances, dk), distances)
    x_adv = attacks.DeepFool(overshoot=0.0)(model, x, y).numpy()
    norms = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(norms, distances, rtol=1e-3, atol=2e-4)
    assert np.all(np.argmax(model(x_adv).numpy(), 1) != y)


def test_cw_l2_finds_nearly_the_minimal_perturbation(make_linear):
    model, w, b, x = _linear(make_linear, 2, seed=2, n=8)
    x = 0.5 + 0.05 * (x - 0.5)
    logits = x.reshape(len(x), -1) @ w + b
    y = np.argmax(logits, 1).astype(np.int32)
    distance = np.abs(logits[:, 1] - logits[:, 0]) / np.linalg.norm(w[:, 1] - w[:, 0])
    attack = attacks.CarliniWagnerL2(steps=200, search_steps=6, initial_const=1.0)
    x_adv = tf.function(lambda images, labels: attack(model, images, labels))(x, y).numpy()  # graph: fast loops
    norms = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    assert np.all(np.argmax(model(x_adv).numpy(), 1) != y)
    assert np.all(norms >= distance * (1 - 1e-3))  # nothing beats the analytic minimum
    assert np.all(norms <= distance * 1.15 + 1e-3)


def test_square_stays_in_budget_is_deterministic_and_fools_a_linear_model(make_linear):
    model, *_ = _linear(make_linear, 3, seed=3, n=16)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (16, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)
    square = attacks.Square(queries=300)
    x_adv = square(model, x, y, 0.3, seed=2).numpy()
    assert np.abs(x_adv - x).max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    np.testing.assert_array_equal(x_adv, square(model, x, y, 0.3, seed=2).numpy())
    assert not np.array_equal(x_adv, square(model, x, y, 0.3, seed=3).numpy())
    margin_before = -losses.margin_loss(y, model(x)).numpy()
    margin_after = -losses.margin_loss(y, model(x_adv)).numpy()
    assert np.all(margin_after <= margin_before + 1e-6)  # only improving queries are kept
    assert np.mean(np.argmax(model(x_adv).numpy(), 1) == y) < 0.5


def test_square_queries_only_examples_not_yet_fooled(make_linear):
    """Every row the model sees is a query on an example still correctly classified, so the
    rows add up to the queries Square reports; and an example's squares do not depend on the
    rest of the batch (examples fooled from the start leave its result unchanged)."""
    model, *_ = _linear(make_linear, 3, seed=3, n=16)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (16, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)
    rows = []

    def counting(images):
        rows.append(int(images.shape[0]))
        return model(images)

    square = attacks.Square(queries=200)
    x_adv, queries = square.run(counting, x, y, 0.05, seed=2)
    x_adv, queries = x_adv.numpy(), queries.numpy()
    assert sum(rows) == queries.sum()
    fooled = np.argmax(model(x_adv).numpy(), 1) != y
    assert fooled.any() and not fooled.all()
    assert np.all(queries[~fooled] == 200) and np.all((queries[fooled] >= 1) & (queries[fooled] <= 200))
    assert queries.sum() < 16 * 200  # the fooled ones stopped early
    # Every other example fooled at the start (a wrong label): example 0 is attacked alone.
    y_alone = y.copy()
    y_alone[1:] = (y[1:] + 1) % 3
    margins = -losses.margin_loss(y_alone, model(x)).numpy()
    assert np.all(margins[1:] < 0)
    alone, alone_queries = square.run(model, x, y_alone, 0.05, seed=2)
    np.testing.assert_allclose(alone.numpy()[0], x_adv[0], atol=1e-6)
    assert alone_queries.numpy()[0] == queries[0] and np.all(alone_queries.numpy()[1:] == 1)


def test_square_fraction_schedule():
    values = [float(attacks.square_fraction(i, 10000, 0.8)) for i in (0, 10, 11, 51, 9000)]
    assert values == pytest.approx([0.8, 0.8, 0.4, 0.2, 0.8 / 512])
    assert float(attacks.square_fraction(100, 1000, 0.8)) == pytest.approx(0.8 / 16)  # rescaled: 1000 of 10k


def test_composite_call_keeps_first_success_and_stays_in_budget(make_tiny_cnn, toy_data):
    model = make_tiny_cnn()
    x, y = toy_data
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)  # all correct
    composite = attacks.get_attack("fgsm+pgd10")
    x_adv = tf.function(lambda a, b: composite(model, a, b, 0.1, seed=tf.constant([0, 1])))(x, y).numpy()
    fgsm = attacks.fgsm(model, x, y, 0.1).numpy()
    fooled_by_fgsm = np.argmax(model(fgsm).numpy(), 1) != y
    np.testing.assert_allclose(x_adv[fooled_by_fgsm], fgsm[fooled_by_fgsm], atol=1e-6)
    correct = np.argmax(model(x_adv).numpy(), 1) == y
    assert correct.mean() <= 1 - fooled_by_fgsm.mean()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6


def test_attack_names_parse_and_bad_names_fail():
    get = attacks.get_attack
    assert get("apgd-ce") == attacks.APGD(loss="ce", name="apgd-ce")
    assert (get("apgd-t").loss, get("apgd-t").targets, get("apgd-t").steps) == ("dlr", 9, 100)
    assert (get("apgd_ce50x2").steps, get("apgd_ce50x2").restarts) == (50, 2)
    assert get("square1000").queries == 1000
    # AutoAttack's standard version, members and budgets; "fast" is its two APGD stages.
    stages = dict(get("standard").stages())
    assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (stages["apgd-ce"].loss, stages["apgd-ce"].steps, stages["apgd-ce"].restarts) == ("ce", 100, 1)
    assert (stages["apgd-t"].loss, stages["apgd-t"].targets, stages["apgd-t"].steps) == ("dlr", 9, 100)
    assert (stages["fab-t"].targets, stages["fab-t"].steps, stages["fab-t"].restarts) == (9, 100, 1)
    assert stages["square"].queries == 5000
    assert get("aa").members == get("standard").members == attacks.Composite().members
    assert [name for name, _ in get("fast").stages()] == ["apgd-ce", "apgd-t"]
    assert isinstance(get("deepfool"), attacks.DeepFool) and isinstance(get("cw-l2"), attacks.CarliniWagnerL2)
    pgd = attacks.get_attack("pgd50x10")  # the paper's protocol: 50 steps, 10 restarts, step eps / 4
    assert (pgd.steps, pgd.restarts, pgd.step_for(8 / 255)) == (50, 10, 2 / 255)
    assert attacks.get_attack("targeted_pgd10").target == "random"
    assert attacks.get_attack("apgd-dlr").loss == "dlr"  # the engine's parser delegates here
    for bad in ["apgd", "square0x", "bim10", "square100x2", "targeted_square", "fgsm+deepfool", "fab", "fab-t0"]:
        with pytest.raises(ValueError):
            get(bad)
    with pytest.raises(ValueError, match="target"):
        attacks.LinfPGD(target="most_likely")
