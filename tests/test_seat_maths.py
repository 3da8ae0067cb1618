"""SEAT by hand: its attack (start, step direction, projection) and its objective (value and
weight gradient for every option that changes the maths), on a linear classifier where all of
it has a closed form computed in float64 NumPy (tests/closed_form.py), plus flooding under a
2-replica MirroredStrategy.

Each test pins one piece, so a failure names the piece. Every test that compares the library
with a formula also checks that the plausible wrong formulas give a different answer on its
data, so a passing test is not a vacuous one.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf.training.base import CleanPass
from tests import closed_form as cf
from tests.conftest import linear_classifier

SHAPE = (2, 2, 2)  # D = 8 inputs, two channels
K = 3
EPS = 0.2


def _problem(seed=0, batch=16, scale=2.0):
    return cf.linear_problem(SHAPE, K, seed, batch, scale)


def _designed_problem(seed=1, batch=16):
    """A linear model where each term of SEAT's attack decides some pixels' direction: on the
    first four inputs only class 2 has weights, so for an example of class 0 or 1 whose
    runner-up is the other of the two, the margin's gradient vanishes there and the linearity
    term alone sets the step (cross-entropy's gradient, p_2 W_2, does not vanish). No two
    weights of a class cancel, so no start leaves a logit unchanged."""
    rng = np.random.default_rng(seed)
    W = np.zeros((int(np.prod(SHAPE)), K))
    W[:4, 2] = [2.5, -3.0, 3.5, -2.1]
    W[4:6, 0] = [2.0, 1.3]
    W[6:8, 1] = [1.7, 2.2]
    b = np.array([0.0, 0.0, -1.0])
    x = 0.5 + rng.uniform(-0.1, 0.1, (batch,) + SHAPE)
    y = rng.integers(0, 2, batch)
    return W, b, x, y


def _seat(W, b, compile_model=True, **kwargs):
    kwargs.setdefault("epsilon", EPS)
    model = seat_tf.SEATModel.from_preset("default", linear_classifier(W, b, SHAPE), val_attack=None, seed=3, **kwargs)
    if compile_model:
        model.compile(optimizer=keras.optimizers.SGD(0.1))  # step_seed() reads optimizer.iterations
    return model


def _numpy_clean_pass(W, b, x, y, loss_offset=0.0):
    """The clean pass computed in NumPy (CE and its input gradient at x), as TF constants."""
    return CleanPass(
        tf.constant(cf.logits(W, b, x), tf.float32),
        tf.constant(cf.ce(W, b, x, y) + loss_offset, tf.float32),
        tf.constant(cf.ce_grad_x(W, b, x, y), tf.float32),
    )


def _perturb(model, x, y, clean, eps=EPS):
    return model.perturb(tf.constant(x, tf.float32), tf.constant(y, tf.int32), tf.constant(eps, tf.float32),
                         clean).numpy()


# -- the attack ------------------------------------------------------------------------------


def seat_attack_gradient(W, b, x, y, x0, clean_loss, clean_grad, lam, score="margin", on="logits",
                         reduction="example", linearity_sign=1.0):
    """grad_x0 [score(x0) + lam * |l(x0) - l(x) - d.g|] (reduction "batch": the residual times
    the sign of the batch-mean residual), in NumPy. linearity_sign=-1 gives the wrong sign."""
    d = cf.flat(x0 - x)
    residual = cf.ce(W, b, x0, y) - clean_loss - (d * cf.flat(clean_grad)).sum(1)
    sign = np.sign(residual) if reduction == "example" else np.full_like(residual, np.sign(residual.mean()))
    residual_grad = cf.ce_grad_x(W, b, x0, y) - clean_grad
    score_grad = cf.margin_grad_x(W, b, x0, y, on) if score == "margin" else cf.ce_grad_x(W, b, x0, y)
    return score_grad + lam * linearity_sign * sign.reshape((-1,) + (1,) * len(SHAPE)) * residual_grad


def _direction(*args, **kwargs):
    grad = seat_attack_gradient(*args, **kwargs)
    assert np.abs(grad).min() > 1e-4, "a gradient component too close to 0 to have a reliable sign"
    return np.sign(grad)


def test_seat_attack_starts_at_a_random_corner_of_the_ball(recorded_starts):
    W, b, x, y = _problem()
    _perturb(_seat(W, b), x, y, _numpy_clean_pass(W, b, x, y))
    (start,) = recorded_starts
    np.testing.assert_array_equal(np.abs(start), np.float32(EPS))  # exactly +-eps in every pixel
    assert 0.3 < np.mean(start > 0) < 0.7  # random signs


@pytest.mark.parametrize("options", [
    dict(lam=2.0),
    dict(lam=2.0, margin_on="probs"),
    dict(lam=0.0, attack_lam=2.0),
    dict(lam=2.0, attack_loss="ce"),
], ids=["margin_logits", "margin_probs", "attack_lam", "ce_ablation"])
def test_seat_attack_steps_along_the_sign_of_margin_plus_lam_linearity(recorded_starts, options):
    """With step 2 eps from a corner, the projected result is x + eps * sign(gradient at the
    start): the attack's direction in every pixel."""
    W, b, x, y = _designed_problem()
    model = _seat(W, b, rel_step_size=2.0, **options)
    x_adv = _perturb(model, x, y, _numpy_clean_pass(W, b, x, y))
    x0 = x + recorded_starts[0]
    lam = options.get("attack_lam", options["lam"])
    score, on = options.get("attack_loss", "margin"), options.get("margin_on", "logits")
    common = (W, b, x, y, x0, cf.ce(W, b, x, y), cf.ce_grad_x(W, b, x, y))
    expected = _direction(*common, lam, score, on)
    np.testing.assert_allclose(x_adv - x, EPS * expected, atol=1e-6)
    # The wrong attacks move differently on these data.
    wrong = {
        "other score": _direction(*common, lam, "ce" if score == "margin" else "margin", on),
        "linearity sign flipped": _direction(*common, lam, score, on, linearity_sign=-1.0),
        "no linearity term": np.sign(seat_attack_gradient(*common, 0.0, score, on)),
        "objective's lam": np.sign(seat_attack_gradient(*common, options["lam"], score, on)),
    }
    if score == "margin":
        wrong["margin on the other scores"] = _direction(*common, lam, score, "probs" if on == "logits" else "logits")
    for name, direction in wrong.items():
        if name == "objective's lam" and "attack_lam" not in options:
            continue
        assert np.any(direction != expected), name


def test_seat_attack_batch_reduction_uses_the_sign_of_the_batch_mean_residual(recorded_starts):
    """reduction="batch": each example's residual gradient with the batch's sign. A clean loss
    offset per example (any clean pass is an input of perturb) gives residuals of both signs."""
    W, b, x, y = _designed_problem(seed=2)
    offset = np.where(np.arange(len(y)) % 2 == 0, 0.3, -0.2)
    common_kw = dict(rel_step_size=2.0, lam=3.0)
    clean_loss = cf.ce(W, b, x, y) + offset
    results = {}
    for reduction in ("example", "batch"):
        recorded_starts.clear()
        x_adv = _perturb(_seat(W, b, reduction=reduction, **common_kw), x, y, _numpy_clean_pass(W, b, x, y, offset))
        x0 = x + recorded_starts[0]
        expected = _direction(W, b, x, y, x0, clean_loss, cf.ce_grad_x(W, b, x, y), 3.0, reduction=reduction)
        other = _direction(W, b, x, y, x0, clean_loss, cf.ce_grad_x(W, b, x, y), 3.0,
                           reduction="batch" if reduction == "example" else "example")
        residual = cf.ce(W, b, x0, y) - clean_loss - (cf.flat(x0 - x) * cf.flat(cf.ce_grad_x(W, b, x, y))).sum(1)
        assert np.any(residual > 0) and np.any(residual < 0)
        assert np.any(other != expected)
        np.testing.assert_allclose(x_adv - x, EPS * expected, atol=1e-6)
        results[reduction] = x_adv


def test_seat_attack_default_step_is_eps_then_projected(recorded_starts):
    """Step eps (rel_step_size 1) from the corner: where the step points back across x the
    pixel lands on x, elsewhere the projection keeps it at the corner. Nothing else appears."""
    W, b, x, y = _problem(seed=3)
    x_adv = _perturb(_seat(W, b, lam=1.0), x, y, _numpy_clean_pass(W, b, x, y))
    start = recorded_starts[0]
    direction = _direction(W, b, x, y, x + start, cf.ce(W, b, x, y), cf.ce_grad_x(W, b, x, y), 1.0)
    expected = np.where(direction == np.sign(start), start, 0.0)
    np.testing.assert_allclose(x_adv - x, expected, atol=1e-6)
    assert np.any(expected == 0) and np.any(expected != 0)


def test_seat_attack_steps_repeat_the_signed_step_from_each_iterate(recorded_starts):
    """attack_steps=2: the second step starts where the first ended (its own gradient of margin
    + lam * |residual relative to the clean x|), then projects onto the ball again. Pixels the
    first step left at x move by the second."""
    W, b, x, y = _problem(seed=3)
    clean_loss, clean_grad = cf.ce(W, b, x, y), cf.ce_grad_x(W, b, x, y)
    x_adv = _perturb(_seat(W, b, lam=1.0, attack_steps=2), x, y, _numpy_clean_pass(W, b, x, y))
    point = x + recorded_starts[0]
    for _ in range(2):
        direction = _direction(W, b, x, y, point, clean_loss, clean_grad, 1.0)
        point = x + np.clip(point + EPS * direction - x, -EPS, EPS)
    np.testing.assert_allclose(x_adv, point, atol=1e-6)
    one_step = x + np.where(_direction(W, b, x, y, x + recorded_starts[0], clean_loss, clean_grad, 1.0)
                            == np.sign(recorded_starts[0]), recorded_starts[0], 0.0)
    assert np.any(np.abs(x_adv - one_step) > EPS / 2)  # not the single step's result
    with pytest.raises(ValueError, match="attack_steps"):
        seat_tf.SEATVariant(attack_steps=0)


def test_seat_attack_clips_to_the_unit_box(recorded_starts):
    W, b, x, y = _problem(seed=4)
    x = x.copy()
    x[:, 0, 0, 0] = 0.05  # within eps of the box's borders
    x[:, 1, 1, 1] = 0.97
    x_adv = _perturb(_seat(W, b, lam=1.0), x, y, _numpy_clean_pass(W, b, x, y))
    start = recorded_starts[0]
    x0 = np.clip(x + start, 0, 1)  # the start is clipped to the box too
    direction = _direction(W, b, x, y, x0, cf.ce(W, b, x, y), cf.ce_grad_x(W, b, x, y), 1.0)
    expected = np.clip(x + np.clip(x0 + EPS * direction - x, -EPS, EPS), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert np.any(x_adv == 0) and np.any(x_adv == 1)


# -- the clean pass --------------------------------------------------------------------------


def test_clean_pass_is_the_cross_entropy_and_its_input_gradient():
    W, b, x, y = _problem(seed=5)
    model = _seat(W, b)
    clean = model.compute_clean_pass(tf.constant(x, tf.float32), tf.constant(y), tf.GradientTape())
    np.testing.assert_allclose(clean.logits.numpy(), cf.logits(W, b, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clean.loss.numpy(), cf.ce(W, b, x, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clean.grad.numpy(), cf.ce_grad_x(W, b, x, y), rtol=1e-4, atol=1e-6)


class _DoubledWhenTraining(keras.layers.Layer):
    """Logits x2 in training mode: the mode a pass ran in shows in its logits (as BatchNorm's
    batch statistics or dropout would, deterministically)."""

    def call(self, inputs, training=None):
        return inputs * 2.0 if training else inputs


@pytest.mark.parametrize("attack_training", [True, False])
def test_each_pass_runs_the_classifier_in_its_documented_mode(attack_training):
    """Clean pass and objective in training mode (BatchNorm learns from them), the attack per
    `attack_training`, evaluation in inference mode."""
    W, b, x, y = _problem(seed=5)
    inputs = keras.Input(SHAPE)
    classifier = keras.Model(inputs, _DoubledWhenTraining()(linear_classifier(W, b, SHAPE)(inputs)))
    model = seat_tf.SEATModel(classifier, epsilon=EPS, val_attack=None, attack_training=attack_training)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    xt, yt = tf.constant(x, tf.float32), tf.constant(y)
    z = cf.logits(W, b, x)
    clean = model.compute_clean_pass(xt, yt, tf.GradientTape())
    np.testing.assert_allclose(clean.logits.numpy(), 2 * z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clean.loss.numpy(), cf.ce(2 * W, 2 * b, x, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.attack_logits(xt).numpy(), (2 if attack_training else 1) * z, rtol=1e-5, atol=1e-5)
    _, logs = model.objective(xt, yt, xt, clean)
    np.testing.assert_allclose(logs["adv_logits"].numpy(), 2 * z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), z, rtol=1e-5, atol=1e-5)


# -- the objective ---------------------------------------------------------------------------


def seat_objective(W, b, x, y, x_adv, lam, offset, W0=None, b0=None, flood_level=None, reduction="example",
                   clip=None, clean_loss_gradient=False, double_backprop=False):
    """SEAT's objective at weights (W, b) in NumPy (defaults: SEATModel's). The clean loss and clean input gradient
    are taken at (W0, b0) where the library treats them as constants (clean_loss_gradient
    False; double_backprop False), so finite differences over (W, b) give its gradient."""
    W0 = W if W0 is None else W0
    b0 = b if b0 is None else b0
    adv = cf.ce(W, b, x_adv, y)
    clean = (cf.ce(W, b, x, y) if clean_loss_gradient else cf.ce(W0, b0, x, y)) + offset
    g = cf.ce_grad_x(W, b, x, y) if double_backprop else cf.ce_grad_x(W0, b0, x, y)
    residual = adv - clean - (cf.flat(x_adv - x) * cf.flat(g)).sum(1)
    mean = adv.mean()
    flooded = mean if flood_level is None else abs(mean - flood_level) + flood_level
    if reduction == "batch":
        linearity = abs(residual.mean())
    else:
        error = np.abs(residual)
        linearity = (error if clip is None else np.minimum(error, clip)).mean()
    return flooded + lam * linearity, residual


def seat_objective_gradient(W, b, x, y, x_adv, lam, offset, flood_level=None, reduction="example", clip=None,
                            clean_loss_gradient=False, double_backprop=False):
    """The closed-form weight gradient of the objective above (softmax CE on a linear model:
    d CE / dW = x (p - e_y)^T; d (d . g) / dW for double backprop from d p / d z)."""
    batch = len(y)
    _, residual = seat_objective(W, b, x, y, x_adv, lam, offset, reduction=reduction)
    adv_dz = cf.ce_logit_grad(W, b, x_adv, y)
    clean_dz = cf.ce_logit_grad(W, b, x, y)
    mean = cf.ce(W, b, x_adv, y).mean()
    flood_sign = 1.0 if flood_level is None else np.sign(mean - flood_level)
    dW, db = (flood_sign * g / batch for g in cf.weight_grad(x_adv, adv_dz))
    # d residual_i / d weights, per example, then weighted by the reduction's coefficients.
    if reduction == "batch":
        coefficient = np.full(batch, np.sign(residual.mean()) / batch)
    else:
        coefficient = np.sign(residual) / batch
        if clip is not None:
            coefficient = np.where(np.abs(residual) > clip, 0.0, coefficient)
    c = lam * coefficient[:, None]
    gW, gb = cf.weight_grad(x_adv, c * adv_dz)
    dW, db = dW + gW, db + gb
    if clean_loss_gradient:
        gW, gb = cf.weight_grad(x, c * clean_dz)
        dW, db = dW - gW, db - gb
    if double_backprop:
        # d/dW of d . W (p - e_y): d (p - e_y)^T + x [p * (u - p.u)]^T with u = W^T d.
        d = cf.flat(x_adv - x)
        p = cf.softmax(cf.logits(W, b, x))
        u = d @ W
        dz = p * (u - (p * u).sum(1, keepdims=True))
        dW = dW - (d.T @ (c * clean_dz) + cf.flat(x).T @ (c * dz))
        db = db - (c * dz).sum(0)
    return dW, db


OBJECTIVE_CASES = {
    "plain": dict(),
    "batch_reduction": dict(reduction="batch"),
    "flood_above_level": dict(flood_level=0.05),
    "flood_below_level": dict(flood_level=6.0),
    "clean_loss_gradient": dict(clean_loss_gradient=True),  # the paper's form (preset "paper")
    "double_backprop": dict(double_backprop=True),
    "linearity_clip": dict(linearity_clip=0.1),
}


def _objective_problem(seed=6):
    W, b, x, y = _problem(seed=seed, batch=8, scale=1.5)
    rng = np.random.default_rng(seed + 100)
    x_adv = x + EPS * np.sign(rng.uniform(-1, 1, x.shape))
    # Residuals of both signs and sizes on either side of the clip (a clean pass with an
    # offset loss is as valid an input of the objective as the true one).
    offset = np.array([0.4, -0.3, 0.05, -0.02, 0.3, -0.5, 0.01, 0.2])
    return W, b, x, y, x_adv, offset


def _library_objective(W, b, x, y, x_adv, offset, lam, model=None, **options):
    model = model or _seat(W, b, lam=lam, **options)
    variables = model.classifier.trainable_variables
    x_t, y_t = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
    tape = tf.GradientTape()
    clean = model.compute_clean_pass(x_t, y_t, tape)
    with tape:
        clean = clean._replace(loss=clean.loss + tf.constant(offset, tf.float32))
        loss, logs = model.objective(x_t, y_t, tf.constant(x_adv, tf.float32), clean)
    dW, db = tape.gradient(loss, variables)
    return float(loss), dW.numpy(), db.numpy(), logs


@pytest.mark.parametrize("case", list(OBJECTIVE_CASES))
def test_seat_objective_value_and_weight_gradient(case):
    options = OBJECTIVE_CASES[case]
    numpy_options = {("clip" if k == "linearity_clip" else k): v for k, v in options.items()}
    lam = 0.7
    W, b, x, y, x_adv, offset = _objective_problem()
    loss, dW, db, logs = _library_objective(W, b, x, y, x_adv, offset, lam, **options)
    value, residual = seat_objective(W, b, x, y, x_adv, lam, offset, **numpy_options)
    assert np.any(residual > 0) and np.any(residual < 0)
    assert np.any(np.abs(residual) > 0.1) and np.any(np.abs(residual) < 0.1)
    assert loss == pytest.approx(value, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(logs["linearity_error"].numpy(), np.abs(residual), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["adv_loss"].numpy(), cf.ce(W, b, x_adv, y), rtol=1e-5, atol=1e-6)
    eW, eb = seat_objective_gradient(W, b, x, y, x_adv, lam, offset, **numpy_options)
    np.testing.assert_allclose(dW, eW, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, eb, rtol=1e-4, atol=1e-5)
    # The closed form agrees with finite differences of the NumPy objective (a check of the test).
    nW, nb = cf.numeric_gradient(
        lambda w, c: seat_objective(w, c, x, y, x_adv, lam, offset, W0=W, b0=b, **numpy_options)[0], [W, b])
    np.testing.assert_allclose(eW, nW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eb, nb, rtol=1e-5, atol=1e-6)
    # The option changes the gradient on these data (the plain case is the reference); above
    # its level, flooding must change nothing.
    if options and case != "flood_above_level":
        pW, _ = seat_objective_gradient(W, b, x, y, x_adv, lam, offset)
        assert np.abs(pW - eW).max() > 1e-3


def test_use_double_backprop_switches_the_objective_to_the_double_backprop_gradient():
    # What DivergenceGuard(on_drift="double_backprop") calls on a drifting SEAT run.
    lam = 0.7
    W, b, x, y, x_adv, offset = _objective_problem()
    model = _seat(W, b, lam=lam)
    assert model.use_double_backprop() and not model.use_double_backprop()  # False: already on
    assert model.variant.double_backprop and model.get_config()["variant"]["double_backprop"]
    _, dW, db, _ = _library_objective(W, b, x, y, x_adv, offset, lam, model=model)
    eW, eb = seat_objective_gradient(W, b, x, y, x_adv, lam, offset, double_backprop=True)
    np.testing.assert_allclose(dW, eW, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, eb, rtol=1e-4, atol=1e-5)
    assert np.abs(seat_objective_gradient(W, b, x, y, x_adv, lam, offset)[0] - eW).max() > 1e-3


def test_flooding_reverses_the_gradient_below_the_level_only():
    """Below the flood level b the adversarial term's gradient is ascent, above it descent."""
    W, b, x, y, x_adv, offset = _objective_problem(seed=7)
    mean = cf.ce(W, b, x_adv, y).mean()
    descent, _ = cf.weight_grad(x_adv, cf.ce_logit_grad(W, b, x_adv, y) / len(y))
    for level, sign in ((0.5 * mean, 1.0), (2.0 * mean, -1.0)):
        _, dW, _, _ = _library_objective(W, b, x, y, x_adv, offset, lam=0.0, flood_level=level)
        np.testing.assert_allclose(dW, sign * descent, rtol=1e-4, atol=1e-6)
    loss, _, _, _ = _library_objective(W, b, x, y, x_adv, offset, lam=0.0, flood_level=2.0 * mean)
    assert loss == pytest.approx(2 * (2.0 * mean) - mean, rel=1e-5)  # |L - b| + b


# -- flooding and |batch mean| under 2 replicas ----------------------------------------------------


def _mirrored_job():
    """On 2 logical CPUs: the per-replica objective shares and their weight gradients, summed
    over replicas as the optimizer does, for a batch whose halves lie on opposite sides of
    the flood level."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    spec = json.loads(sys.stdin.read())
    W, b = np.array(spec["W"]), np.array(spec["b"])
    x, y, x_adv, offset = (np.array(spec[k]) for k in ("x", "y", "x_adv", "offset"))
    out = {}
    for name, options in spec["cases"].items():
        with strategy.scope():
            model = seat_tf.SEATModel.from_preset("default", linear_classifier(W, b, SHAPE), epsilon=EPS, val_attack=None,
                                                **options)
        variables = model.classifier.trainable_variables
        half = len(y) // 2

        def part(context, array, dtype=tf.float32):
            i = context.replica_id_in_sync_group
            return tf.constant(array[i * half:(i + 1) * half], dtype)

        inputs = [strategy.experimental_distribute_values_from_function(
            lambda c, a=a, t=t: part(c, a, t)) for a, t in ((x, tf.float32), (y, tf.int32), (x_adv, tf.float32),
                                                           (offset, tf.float32))]

        def step(x_r, y_r, adv_r, offset_r):
            tape = tf.GradientTape()
            clean = model.compute_clean_pass(x_r, y_r, tape)
            with tape:
                clean = clean._replace(loss=clean.loss + offset_r)
                loss, _ = model.objective(x_r, y_r, adv_r, clean)
            return [loss] + tape.gradient(loss, variables)

        results = strategy.run(step, args=tuple(inputs))
        summed = [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None).numpy() for r in results]
        out[name] = dict(loss=float(summed[0]), dW=summed[1].tolist(), db=summed[2].tolist())
    return out


def test_flooding_and_batch_reduction_use_the_global_batch_under_two_replicas():
    W, b, x, y, x_adv, offset = _objective_problem(seed=8)
    adv = cf.ce(W, b, x_adv, y)
    # Order the batch so replica 0 holds the 4 lowest adversarial losses, replica 1 the rest,
    # and put the level between the two halves' means but below the global mean: a
    # per-replica flood would ascend on replica 0.
    order = np.argsort(adv)
    x, y, x_adv, offset, adv = x[order], y[order], x_adv[order], offset[order], adv[order]
    level = 0.5 * (adv[:4].mean() + adv.mean())
    assert adv[:4].mean() < level < adv.mean()
    cases = {
        "flood": dict(lam=0.0, flood_level=float(level)),
        "flood_and_batch_linearity": dict(lam=0.7, flood_level=float(level), reduction="batch"),
        "flood_above_global_mean": dict(lam=0.7, flood_level=float(adv.mean() + 0.5 * (adv[4:].mean() - adv.mean()))),
    }
    spec = dict(W=W.tolist(), b=b.tolist(), x=x.tolist(), y=y.tolist(), x_adv=x_adv.tolist(), offset=offset.tolist(),
                cases=cases)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, os.path.abspath(__file__)], input=json.dumps(spec), capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name, options in cases.items():
        numpy_options = dict(options)
        lam = numpy_options.pop("lam")
        value, residual = seat_objective(W, b, x, y, x_adv, lam, offset, **numpy_options)
        eW, eb = seat_objective_gradient(W, b, x, y, x_adv, lam, offset, **numpy_options)
        assert got[name]["loss"] == pytest.approx(value, rel=1e-5), name
        np.testing.assert_allclose(np.array(got[name]["dW"]), eW, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.array(got[name]["db"]), eb, rtol=1e-4, atol=1e-5, err_msg=name)
    # A per-replica reduction (each half flooded / |mean|-ed on its own) would differ.
    for name, options in cases.items():
        numpy_options = dict(options)
        lam = numpy_options.pop("lam")
        halves = [seat_objective_gradient(W, b, x[s], y[s], x_adv[s], lam, offset[s], **numpy_options)
                  for s in (slice(0, 4), slice(4, 8))]
        per_replica = 0.5 * (halves[0][0] + halves[1][0])
        global_batch = seat_objective_gradient(W, b, x, y, x_adv, lam, offset, **numpy_options)[0]
        if name != "flood_above_global_mean":
            assert np.abs(per_replica - global_batch).max() > 1e-3, name

if __name__ == "__main__":
    print(json.dumps(_mirrored_job()))
