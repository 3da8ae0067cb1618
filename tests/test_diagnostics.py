import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import diagnostics, precision, reporting


def _points(shape=(4, 3, 3, 1), seed=0):
    """Images well inside [0, 1], so an eps-ball of 0.1 never touches the box."""
    return np.random.default_rng(seed).uniform(0.3, 0.7, shape).astype(np.float32)


def _quadratic(h, center):
    """l(x) = 0.5 * sum_i h_i (x_i - c_i)^2 per example, with its closed form for numpy."""
    h_t, c_t = tf.constant(h, tf.float32), tf.constant(center, tf.float32)
    axes = tuple(range(1, h.ndim + 1))
    fn = lambda x: 0.5 * tf.reduce_sum(h_t * (x - c_t) ** 2, axis=axes)  # noqa: E731
    numpy_fn = lambda x: 0.5 * np.sum(h * (x - center) ** 2, axis=axes)  # noqa: E731
    return fn, numpy_fn


# -- linearity error -----------------------------------------------------------------------------


def test_linearity_error_of_a_linear_loss_is_zero():
    x = _points()
    w = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 1)), tf.float32)
    loss_fn = lambda images: tf.reduce_sum(w * images, axis=[1, 2, 3]) + 0.7  # noqa: E731
    error = diagnostics.local_linearity_error(loss_fn, x, eps=0.1, steps=5).numpy()
    np.testing.assert_allclose(error, 0.0, atol=1e-5)


def test_linearity_error_of_a_linear_classifier_margin_is_zero(make_linear):
    """Two classes, margin loss z_other - z_y: linear in the input through a real model."""
    rng = np.random.default_rng(2)
    model = make_linear(rng.normal(size=(9, 2)), rng.normal(size=2), (3, 3, 1))
    x, y = _points(), np.array([0, 1, 0, 1])
    loss_fn = diagnostics.model_loss_fn(model, y, loss="margin")
    np.testing.assert_allclose(diagnostics.local_linearity_error(loss_fn, x, 0.1).numpy(), 0.0, atol=1e-5)
    # Cross-entropy of the same model is curved: the monitor must see a non-zero error.
    ce_error = diagnostics.local_linearity_error(diagnostics.model_loss_fn(model, y), x, 0.1).numpy()
    assert ce_error.max() > 1e-4


def test_linearity_error_of_a_quadratic_is_the_closed_form():
    """0.5 d^T H d with H = diag(h) > 0: the max over the ball is at a vertex, eps^2 sum(h) / 2;
    with steps=0 the error is exactly 0.5 d^T H d at the (random corner) start d."""
    rng = np.random.default_rng(3)
    x = _points()
    h = rng.uniform(0.5, 2.0, size=(3, 3, 1)).astype(np.float32)
    loss_fn, _ = _quadratic(h, center=rng.uniform(0, 1, size=(3, 3, 1)).astype(np.float32))
    eps = 0.1
    searched = diagnostics.local_linearity_error(loss_fn, x, eps, steps=4).numpy()
    np.testing.assert_allclose(searched, 0.5 * eps**2 * h.sum(), rtol=1e-4)
    start = diagnostics.local_linearity_error(loss_fn, x, eps, steps=0, init="uniform", seed=7).numpy()
    delta = seat_tf.attacks.random_start(tf.constant(x), eps, "uniform", seed=7).numpy()
    np.testing.assert_allclose(start, 0.5 * np.sum(h * delta**2, axis=(1, 2, 3)), rtol=1e-4)
    assert np.all(start < searched)


# -- Lipschitz ----------------------------------------------------------------------------------------


def test_lipschitz_upper_of_a_linear_loss_is_the_dual_norm():
    """For l(x) = w.x on an L-inf ball, max |l(x')-l(x)| / |x'-x|_inf = |w|_1 (not |w|_2)."""
    w = np.random.default_rng(4).normal(size=(3, 3, 1)).astype(np.float32)
    loss_fn = lambda images: tf.reduce_sum(tf.constant(w) * images, axis=[1, 2, 3])  # noqa: E731
    estimates = diagnostics.local_lipschitz(loss_fn, _points(), eps=0.1, steps=10)
    np.testing.assert_allclose(estimates["upper"].numpy(), np.abs(w).sum(), rtol=1e-4)
    assert np.abs(w).sum() > 1.2 * np.sqrt((w**2).sum())  # the test tells L1 from L2
    assert np.all(estimates["lower"].numpy() >= 0)
    assert np.all(estimates["lower"].numpy() < 0.5 * np.abs(w).sum())


def test_lipschitz_of_a_linear_classifier_equals_the_weight_difference_norm(make_linear):
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(9, 2)).astype(np.float32)
    model = make_linear(weights, np.zeros(2), (3, 3, 1))
    y = np.array([0, 1, 1, 0])
    estimates = diagnostics.local_lipschitz(diagnostics.model_loss_fn(model, y, "margin"), _points(), eps=0.05)
    np.testing.assert_allclose(estimates["upper"].numpy(), np.abs(weights[:, 1] - weights[:, 0]).sum(), rtol=1e-4)


def test_lipschitz_in_one_dimension_lower_equals_upper():
    """In 1-D every direction is the same: both estimates are |w|."""
    loss_fn = lambda images: -2.5 * images[:, 0]  # noqa: E731
    estimates = diagnostics.local_lipschitz(loss_fn, np.full((3, 1), 0.5, np.float32), eps=0.1, steps=6)
    np.testing.assert_allclose(estimates["lower"].numpy(), 2.5, rtol=1e-4)
    np.testing.assert_allclose(estimates["upper"].numpy(), 2.5, rtol=1e-4)


def test_bad_eps_is_a_value_error():
    with pytest.raises(ValueError, match="eps"):
        diagnostics.local_lipschitz(lambda x: x[:, 0], np.zeros((1, 1), np.float32), eps=8)


# -- landscapes ----------------------------------------------------------------------------------------


def test_input_landscape_of_a_quadratic_is_the_parabola_surface():
    rng = np.random.default_rng(6)
    x = _points((2, 3, 3, 1))
    h = rng.uniform(0.5, 2.0, size=(3, 3, 1)).astype(np.float32)
    center = rng.uniform(0, 1, size=(3, 3, 1)).astype(np.float32)
    loss_fn, numpy_fn = _quadratic(h, center)
    eps = 0.05
    land = diagnostics.input_loss_landscape(loss_fn, x, eps, grid=5, span=2.0, seed=1)
    adv, rand = land["adv_direction"], land["random_direction"]
    np.testing.assert_array_equal(adv, np.sign(h * (x - center)))  # FGSM direction of the quadratic
    assert set(np.unique(rand)) <= {-1.0, 1.0}
    expected = np.stack([np.stack([numpy_fn(x + eps * (a * adv + b * rand)) for b in land["coords"]])
                         for a in land["coords"]])
    np.testing.assert_allclose(land["losses"], expected, rtol=1e-5)
    # The surface is a paraboloid: second differences along each axis are constant.
    second = np.diff(land["losses"][:, 2, 0], 2)
    np.testing.assert_allclose(second, second[0], rtol=1e-3)


def test_filter_normalized_direction_matches_filter_norms():
    kernel = tf.Variable(np.random.default_rng(7).normal(size=(3, 3, 2, 4)).astype(np.float32))
    bias = tf.Variable(np.ones(4, np.float32))
    d_kernel, d_bias = diagnostics.filter_normalized_direction([kernel, bias], seed=0)
    np.testing.assert_allclose(np.linalg.norm(d_kernel.reshape(-1, 4), axis=0),
                               np.linalg.norm(kernel.numpy().reshape(-1, 4), axis=0), rtol=1e-5)
    np.testing.assert_array_equal(d_bias, 0.0)
    again, _ = diagnostics.filter_normalized_direction([kernel, bias], seed=0)
    np.testing.assert_array_equal(again, d_kernel)


def test_weight_landscape_of_least_squares_is_the_parabola_and_restores_weights():
    """z = x @ w (no bias), loss (z - t)^2: L(w + a d) is a parabola in a with known coefficients."""
    rng = np.random.default_rng(8)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(inputs))
    x = rng.normal(size=(40, 5)).astype(np.float32)
    t = rng.normal(size=40).astype(np.float32)
    squared = lambda labels, z: (z[:, 0] - tf.cast(labels, tf.float32)) ** 2  # noqa: E731
    before = [w.copy() for w in model.get_weights()]
    land = diagnostics.weight_loss_landscape(model, x, t, dims=1, grid=7, span=1.5, loss=squared, seed=3, batch_size=16)
    (d,) = diagnostics.filter_normalized_direction(model.trainable_variables, seed=3)
    w = before[0]
    expected = [np.mean(((x @ (w + a * d))[:, 0] - t) ** 2) for a in land["coords"]]
    np.testing.assert_allclose(land["losses"], expected, rtol=1e-4)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    two = diagnostics.weight_loss_landscape(model, x, t, dims=2, grid=3, loss=squared, seed=3)
    assert two["losses"].shape == (3, 3)
    np.testing.assert_allclose(two["losses"][1, 1], np.mean(((x @ w)[:, 0] - t) ** 2), rtol=1e-5)


# -- decision boundary -------------------------------------------------------------------------------


def test_boundary_curve_of_a_linear_classifier_is_the_closed_form(make_linear):
    rng = np.random.default_rng(9)
    weights = rng.normal(size=(9, 2)).astype(np.float32)
    model = make_linear(weights, np.zeros(2), (3, 3, 1))
    x = _points((64, 3, 3, 1), seed=10)
    y = rng.integers(0, 2, 64).astype(np.int32)
    eps = 0.02
    result = diagnostics.boundary_distortion(precision.logits_fn(model), x, y, eps, num=11, max_scale=2.0)
    flat = x.reshape(64, -1)
    margin = flat @ (weights[:, 0] - weights[:, 1]) * np.where(y == 0, 1, -1)  # > 0: correct
    slope = np.abs(weights[:, 0] - weights[:, 1]).sum()
    expected = [np.mean(margin - k * eps * slope > 0) for k in result["scales"]]
    np.testing.assert_allclose(result["accuracy"], expected)
    assert result["distortion"] == 0.0  # a linear boundary cannot be distorted


def test_boundary_distortion_flags_a_model_wrong_inside_the_ball():
    """z1 - z0 = -0.1 + sin(2 pi (x - x0) / eps): right at x0 and at x0 + eps, wrong between."""
    eps = 0.1
    x0 = np.full((3, 1), 0.5, np.float32)

    def model_fn(images):
        wave = -0.1 + tf.sin(2 * np.pi * (images - x0) / eps)
        return tf.concat([tf.zeros_like(wave), wave], axis=-1)

    result = diagnostics.boundary_distortion(model_fn, x0, np.zeros(3, np.int32), eps, num=21)
    assert result["accuracy"][0] == 1.0 and result["distortion"] == 1.0
    assert result["accuracy"][list(np.round(result["scales"], 6)).index(0.2)] == 0.0


# -- callbacks -------------------------------------------------------------------------------------


class ScriptedMonitor(diagnostics.CatastrophicOverfittingMonitor):
    """The CO monitor with measurements replayed from a list (a synthetic training history)."""

    def __init__(self, script, **kwargs):
        x = np.zeros((2, 8, 8, 1), np.float32)
        # The script replaces the PGD and FGSM measurements but not the real fit's adv_accuracy
        # log, which the training-attack rule compares with them: off unless a test asks.
        kwargs.setdefault("max_train_gap", None)
        super().__init__(x, np.zeros(2, np.int32), 0.1, **kwargs)
        self.script = list(script)

    def measure(self):
        pgd, fgsm = self.script[len(self.records)]
        return dict(clean_accuracy=0.9, fgsm_accuracy=fgsm, pgd_accuracy=pgd, linearity_error=0.01)


HEALTHY = [(0.30, 0.40), (0.42, 0.55), (0.48, 0.60), (0.47, 0.61), (0.50, 0.62)]
COLLAPSING = [(0.30, 0.40), (0.45, 0.58), (0.40, 0.70), (0.01, 0.93), (0.00, 0.97)]


def test_collapse_rule_on_synthetic_histories():
    def first_collapse(history, **kwargs):
        best = None
        for epoch, (pgd, fgsm) in enumerate(history, 1):
            record = dict(pgd_accuracy=pgd, fgsm_accuracy=fgsm)
            if diagnostics.collapse_reasons(record, best, **kwargs):
                return epoch
            best = pgd if best is None else max(best, pgd)
        return None

    assert first_collapse(HEALTHY) is None
    assert first_collapse(COLLAPSING) == 4
    assert first_collapse(COLLAPSING, max_drop=None, max_gap=0.25) == 3  # the gap widens first
    assert first_collapse(HEALTHY, max_drop=None, max_gap=None, min_pgd_accuracy=0.35) == 1


def test_collapse_rule_catches_a_first_epoch_collapse_by_the_training_attack_gap():
    """2 margin steps of 0.75 eps at eps 0.3, epoch 1 of 4 (budget record): the model already
    beats its training attack (0.95) but not PGD (0.02); clean accuracy fell with it, so FGSM's
    lead over PGD (0.25) stays under max_gap and there is no best to drop from."""
    record = dict(pgd_accuracy=0.02, fgsm_accuracy=0.27, train_adv_accuracy=0.95)
    assert diagnostics.collapse_reasons(dict(record, train_adv_accuracy=None), None) == []
    reasons = diagnostics.collapse_reasons(record, None)
    assert len(reasons) == 1 and "training attack 0.950 exceeds PGD accuracy 0.020 by 0.930" in reasons[0]
    assert diagnostics.collapse_reasons(record, None, max_train_gap=None) == []
    assert diagnostics.collapse_reasons(record, None, max_train_gap=0.95) == []
    # Healthy single-step training at a large radius: 0.44 apart, under the default 0.5.
    assert diagnostics.collapse_reasons(dict(pgd_accuracy=0.35, fgsm_accuracy=0.70, train_adv_accuracy=0.79), 0.36) == []


def test_co_monitor_compares_pgd_with_the_model_s_own_training_attack():
    """on_epoch_end reads the adversarial model's adv_accuracy log: the same measurements are a
    collapse when the training attack is beaten and no collapse without that log."""
    monitor = ScriptedMonitor([(0.02, 0.27)], action="warn", max_train_gap=0.5)
    logs = {"adv_accuracy": 0.95}
    monitor.on_epoch_end(0, logs)
    assert logs["co_collapsed"] == 1.0 and monitor.collapsed_epoch == 1
    assert monitor.records[0]["train_adv_accuracy"] == pytest.approx(0.95)
    quiet = ScriptedMonitor([(0.02, 0.27)], action="warn", max_train_gap=None)
    quiet.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    logs = {"adv_accuracy": 0.95}
    quiet.on_epoch_end(0, logs)
    assert logs["co_collapsed"] == 0.0 and quiet.collapsed_epoch is None


def _fit_with(monitor, make_tiny_cnn, toy_data, epochs, method=seat_tf.FGSMATModel, extra_callbacks=(), **kwargs):
    x, y = toy_data
    model = method(make_tiny_cnn(), epsilon=0.05, val_attack=None, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    snapshots = {}

    class Recorder(keras.callbacks.Callback):
        """Before the monitor: the weights each epoch ended with, as trained."""

        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch + 1] = [w.copy() for w in self.model.get_weights()]

    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
                        callbacks=[Recorder(), monitor, *extra_callbacks])
    return model, history.history, snapshots


def test_co_monitor_silent_on_healthy_history(make_tiny_cnn, toy_data):
    monitor = ScriptedMonitor(HEALTHY, action="stop")
    _, history, _ = _fit_with(monitor, make_tiny_cnn, toy_data, epochs=5)
    assert len(history["loss"]) == 5 and history["co_collapsed"] == [0.0] * 5
    assert monitor.collapsed_epoch is None
    assert history["co_pgd_accuracy"] == [p for p, _ in HEALTHY]


def test_co_monitor_measures_the_drop_from_the_best_epoch_not_the_last(make_tiny_cnn, toy_data):
    """PGD accuracy 0.50 -> 0.36 -> 0.22 -> 0.40: each epoch drops 0.14 (under max_drop = 0.2),
    but epoch 3 is 0.28 below the best (0.50), a collapse; epoch 4 is 0.10 below it, none. The
    collapsed epoch does not become the reference (FGSM - PGD gaps stay at 0.1)."""
    monitor = ScriptedMonitor([(0.50, 0.60), (0.36, 0.46), (0.22, 0.32), (0.40, 0.50)], action="warn")
    _, history, _ = _fit_with(monitor, make_tiny_cnn, toy_data, epochs=4)
    assert history["co_collapsed"] == [0.0, 0.0, 1.0, 0.0] and monitor.collapsed_epoch == 3
    assert "below the best 0.500" in monitor.records[2]["reasons"][0]


def test_co_monitor_stop_ends_training_at_the_collapse(make_tiny_cnn, toy_data):
    monitor = ScriptedMonitor(COLLAPSING, action="stop")
    model, history, snapshots = _fit_with(monitor, make_tiny_cnn, toy_data, epochs=5)
    assert len(history["loss"]) == 4 and monitor.collapsed_epoch == 4
    assert history["co_collapsed"] == [0.0, 0.0, 0.0, 1.0]
    for good, now in zip(snapshots[3], model.get_weights()):
        np.testing.assert_array_equal(good, now)


def test_co_monitor_restore_rewinds_weights_and_lowers_lr_and_step(make_tiny_cnn, toy_data, tmp_path):
    after = {}

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            after[epoch + 1] = [w.copy() for w in self.model.get_weights()]

    log_path = str(tmp_path / "co.json")
    monitor = ScriptedMonitor(COLLAPSING, action="restore", lr_factor=0.5, step_factor=0.5, log_path=log_path)
    model, history, snapshots = _fit_with(monitor, make_tiny_cnn, toy_data, epochs=5, extra_callbacks=[After()])
    assert len(history["loss"]) == 5  # restore trains on
    # Epoch 4 collapsed: its weights were replaced by epoch 3's (the last good one).
    for good, restored in zip(snapshots[3], after[4]):
        np.testing.assert_array_equal(good, restored)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(snapshots[4], after[4]))
    # Epoch 5 collapsed too: back to epoch 3 again, the lr and the step halved twice.
    for good, restored in zip(snapshots[3], after[5]):
        np.testing.assert_array_equal(good, restored)
    assert monitor.restores == 2
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05 * 0.25)
    assert model.rel_step_size == pytest.approx(0.25)
    # The traced train step now uses the lowered step: one more step equals a fresh FGSM-AT
    # with rel_step_size 0.25 and lr 0.0125 from the same weights (SGD has no other state).
    x, y = toy_data
    twin = seat_tf.FGSMATModel(keras.models.clone_model(model.classifier), epsilon=0.05, val_attack=None,
                               rel_step_size=0.25)
    twin.classifier.set_weights(model.classifier.get_weights())
    twin.compile(optimizer=keras.optimizers.SGD(0.0125))
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)  # the function traced inside fit
    twin.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    for a, b in zip(model.classifier.get_weights(), twin.classifier.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    saved = json.load(open(log_path))
    assert saved["collapsed_epoch"] == 4 and [r["action"] for r in saved["records"]][-2:] == ["restored", "restored"]


def test_co_monitor_resumed_run_continues_from_its_log(make_tiny_cnn, toy_data, tmp_path):
    """A run killed after epoch 4 and resumed (BackupAndRestore: fit from initial_epoch=4) with
    a fresh model and monitor: the monitor takes epochs 1-4 from its log, lowers the learning
    rate and step again for the restore of epoch 4 (neither is in a weights backup), and ends
    with the unbroken run's records."""
    log_path = str(tmp_path / "co.json")
    first = ScriptedMonitor(COLLAPSING[:4], action="restore", lr_factor=0.5, step_factor=0.5, log_path=log_path)
    _fit_with(first, make_tiny_cnn, toy_data, epochs=4)
    assert first.restores == 1
    x, y = toy_data
    resumed = ScriptedMonitor(COLLAPSING, action="restore", lr_factor=0.5, step_factor=0.5, log_path=log_path)
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    lr_during_epoch_5 = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: lr_during_epoch_5.append(float(model.optimizer.learning_rate)))
    history = model.fit(x, y, batch_size=32, epochs=5, initial_epoch=4, verbose=0, callbacks=[resumed, probe])
    assert len(history.history["loss"]) == 1
    assert lr_during_epoch_5 == [pytest.approx(0.025)]  # the restore of epoch 4, applied again
    # Epoch 5 collapses too (its PGD accuracy is compared with the best of epochs 1-3).
    assert resumed.collapsed_epoch == 4 and resumed.restores == 2
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05 * 0.25)
    assert model.rel_step_size == pytest.approx(0.25)
    saved = json.load(open(log_path))
    assert [r["epoch"] for r in saved["records"]] == [1, 2, 3, 4, 5]
    assert [r["action"] for r in saved["records"]] == [None, None, None, "restored", "restored"]


def test_co_monitor_restore_scales_a_schedule_and_seat_step(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None, variant=dict(step_size=0.04))
    schedule = seat_tf.schedules.CyclicLR(0.1, total_steps=15)
    model.compile(optimizer=keras.optimizers.SGD(schedule))
    monitor = ScriptedMonitor([(0.5, 0.6), (0.0, 0.9), (0.5, 0.6)], action="restore", lr_factor=0.1)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[monitor])
    lr = model.optimizer._learning_rate
    assert isinstance(lr, diagnostics.ScaledSchedule) and lr.factor == pytest.approx(0.1)
    assert float(lr(5)) == pytest.approx(0.1 * float(schedule(5)))
    assert model.variant.step_size == pytest.approx(0.02)
    config = keras.saving.serialize_keras_object(lr)
    assert float(keras.saving.deserialize_keras_object(config)(5)) == pytest.approx(float(lr(5)))


@pytest.mark.parametrize("method", sorted(seat_tf.METHODS))
def test_monitors_measure_every_method(method, make_tiny_cnn, toy_data):
    """Real measurements (no script) for every training method: keys in History, values sane."""
    x, y = toy_data
    co = diagnostics.CatastrophicOverfittingMonitor(x[:32], y[:32], 0.05, attack="pgd3", linearity_steps=2)
    lin = diagnostics.LinearityErrorMonitor(x[:32], y[:32], 0.05, steps=2, every_n_steps=2)
    cls = seat_tf.get_method(method)
    kwargs = {"steps": 2} if method in ("pgd_at", "trades") else {}
    model = cls(make_tiny_cnn(), epsilon=0.05, val_attack=None, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[co, lin]).history
    assert len(history["co_pgd_accuracy"]) == 2 and len(history["local_linearity_error"]) == 2
    for record in co.records:
        assert 0 <= record["pgd_accuracy"] <= record["clean_accuracy"] <= 1
        assert 0 <= record["fgsm_accuracy"] <= 1 and record["linearity_error"] >= 0
    assert [s for s, _ in lin.step_values] == [2, 4, 6]
    assert all(v >= 0 for v in history["local_linearity_error"])


def test_linearity_monitor_writes_tensorboard_and_matches_the_function(make_tiny_cnn, toy_data, tmp_path):
    x, y = toy_data
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    monitor = diagnostics.LinearityErrorMonitor(x[:16], y[:16], 0.05, steps=2, every_n_steps=3,
                                                log_dir=str(tmp_path / "tb"))
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor]).history
    direct = diagnostics.local_linearity_error(diagnostics.model_loss_fn(model, y[:16]), x[:16], 0.05, steps=2)
    assert history["local_linearity_error"][0] == pytest.approx(float(np.mean(direct)), rel=1e-4)
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))


def test_monitor_arguments_are_checked():
    x, y = np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="action"):
        diagnostics.CatastrophicOverfittingMonitor(x, y, 0.1, action="panic")
    with pytest.raises(ValueError, match="labels"):
        diagnostics.CatastrophicOverfittingMonitor(x, y[:1], 0.1)
    with pytest.raises(ValueError, match="every_n_steps"):
        diagnostics.LinearityErrorMonitor(x, y, 0.1, every_n_steps=0)


# -- diagnose + plots --------------------------------------------------------------------------------


def test_diagnose_and_plots(make_tiny_cnn, toy_data, tmp_path):
    x, y = toy_data
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None)
    result = diagnostics.diagnose(model, x[:24], y[:24], 0.05, landscape_grid=5, weight_grid_1d=5, weight_grid_2d=3,
                                  boundary_num=5, lipschitz_steps=2, linearity_steps=2, chunk_size=10,
                                  progress=False)
    json.dumps(result)  # JSON-ready
    assert result["lipschitz"]["lower"]["mean"] <= result["lipschitz"]["upper"]["mean"]
    assert np.asarray(result["input_landscape"]["first_example"]).shape == (5, 5)
    assert np.asarray(result["weight_landscape"]["losses_2d"]).shape == (3, 3)
    assert result["boundary"]["accuracy"][0] == pytest.approx(result["clean_accuracy"])
    paths = reporting.write_plots({"a": result, "b": result}, str(tmp_path))
    for path in paths.values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths.values())


# -- DivergenceGuard ------------------------------------------------------------------------------


class _ScriptedLogs(keras.callbacks.Callback):
    """Overwrites each epoch's `linearity_error` log with a scripted value (listed before the guard)."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs["linearity_error"] = self.values[epoch]


def _guarded_fit(values, **guard_kwargs):
    from seat_tf.diagnostics import DivergenceGuard

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    snapshots, starts = [], []
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: snapshots.append(model.get_weights()),
                                              on_epoch_begin=lambda e, logs: starts.append(model.get_weights()))
    guard = DivergenceGuard(**guard_kwargs)
    history = model.fit(x, y, epochs=len(values), batch_size=16, verbose=0,
                        callbacks=[_ScriptedLogs(values), recorder, guard])
    return model, guard, history.history, (snapshots, starts)


def test_divergence_guard_stays_silent_on_a_healthy_run():
    model, guard, history, _ = _guarded_fit([0.3, 0.25, 0.27, 0.24])
    assert guard.events == [] and "diverged" not in history  # nothing logged while healthy
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_divergence_guard_restores_last_good_weights_and_lowers_the_lr():
    model, guard, history, (ends, starts) = _guarded_fit([0.24, 0.3, 51.0, 0.3], action="restore")
    assert [e["epoch"] for e in guard.events] == [3] and guard.events[0]["action"] == "restored"
    assert history["diverged"] == [0.0, 0.0, 1.0, 0.0]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    for start_of_epoch_4, end_of_epoch_2 in zip(starts[3], ends[1]):  # epoch 3's update was discarded
        np.testing.assert_array_equal(start_of_epoch_4, end_of_epoch_2)


def test_divergence_guard_never_restores_to_a_suspect_epoch():
    # Epoch 2 (5x the best) is not acted on but is not a checkpoint either: the divergence at
    # epoch 3 goes back to epoch 1's weights.
    model, guard, history, (ends, starts) = _guarded_fit([1.0, 5.0, 20.0, 1.0], action="restore")
    assert history["diverged"] == [0.0, 0.0, 1.0, 0.0] and guard.last_good_epoch == 4
    for start_of_epoch_4, end_of_epoch_1 in zip(starts[3], ends[0]):
        np.testing.assert_array_equal(start_of_epoch_4, end_of_epoch_1)


def test_divergence_guard_ends_on_good_weights_after_an_unrecovered_divergence():
    model, guard, history, (ends, _) = _guarded_fit([1.0, 20.0, 5.0], action="restore")
    assert [e["action"] for e in guard.events] == ["restored", "restored at the end"]
    assert guard.last_good_epoch == 1
    for final, good in zip(model.get_weights(), ends[0]):
        np.testing.assert_array_equal(final, good)


def test_divergence_guard_stop_restores_and_stops():
    model, guard, history, (ends, _) = _guarded_fit([0.24, 0.3, 773.0, 0.3, 0.3], action="stop")
    assert len(history["loss"]) == 3 and guard.events[0]["action"] == "stopped"
    for restored, good in zip(model.get_weights(), ends[1]):
        np.testing.assert_array_equal(restored, good)


def test_divergence_guard_warns_once_when_the_linearity_term_drifts_up(caplog):
    # The plain CNN's drifting SEAT run of issue 14, in shape: the term climbs every epoch
    # (0.2 -> 0.7 is 3.5x its best at epoch 4) without ever jumping 10x. A warning, once; no
    # action, no flag, the learning rate untouched, the drifting epochs never a checkpoint.
    with caplog.at_level("WARNING", logger="seat_tf.diagnostics.guard"):
        model, guard, history, _ = _guarded_fit([0.2, 0.25, 0.45, 0.7, 0.9, 1.3], action="restore")
    assert guard.drift_epoch == 4 and guard.events == [] and "diverged" not in history
    warnings = [r.getMessage() for r in caplog.records if "drifting" in r.getMessage()]
    assert len(warnings) == 1 and "linearity_error 0.7 at epoch 4 is 3.5x its best 0.2" in warnings[0]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1) and guard.last_good_epoch == 2
    # Below 3x (healthy runs of the study reached 2.3x) it stays silent; drift_factor=None turns it off.
    assert _guarded_fit([0.2, 0.3, 0.45, 0.58, 0.55])[1].drift_epoch is None
    assert _guarded_fit([0.2, 0.25, 0.45, 0.7], drift_factor=None)[1].drift_epoch is None


def test_divergence_guard_switches_a_drifting_seat_run_to_double_backprop(make_tiny_cnn, toy_data, caplog):
    from seat_tf.diagnostics import DivergenceGuard

    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    guard = DivergenceGuard(action="stop", on_drift="double_backprop")
    functions = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: functions.append(model.train_function))
    with caplog.at_level("WARNING", logger="seat_tf.diagnostics.guard"):
        history = model.fit(x, y, batch_size=32, epochs=6, verbose=0,
                            callbacks=[_ScriptedLogs([0.2, 0.25, 0.45, 0.7, 0.9, 1.3]), recorder, guard])
    assert guard.drift_epoch == 4 and guard.switched_epoch == 4 and guard.events == []
    assert model.variant.double_backprop and model.clean_pass == "differentiable_gradient"
    assert len(history.history["loss"]) == 6 and np.all(np.isfinite(history.history["loss"]))
    # Epochs 1-4 ran one traced step, epochs 5-6 a new one (retraced with double backprop).
    assert functions[0] is functions[3] and functions[4] is not functions[3] and functions[4] is functions[5]
    switched = [r.getMessage() for r in caplog.records if "switched SEAT to double backprop" in r.getMessage()]
    assert len(switched) == 1 and "epoch 4" in switched[0]
    # Without drift nothing changes.
    calm = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None, seed=0)
    calm.compile(optimizer=keras.optimizers.SGD(0.01))
    calm_guard = DivergenceGuard(on_drift="double_backprop")
    calm.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[_ScriptedLogs([0.2, 0.25, 0.3]), calm_guard])
    assert calm_guard.switched_epoch is None and not calm.variant.double_backprop


def test_divergence_guard_on_drift_needs_a_model_that_can_switch():
    from seat_tf.diagnostics import DivergenceGuard

    with pytest.raises(ValueError, match="use_double_backprop"):
        _guarded_fit([0.2, 0.3], on_drift="double_backprop")


def test_divergence_guard_catches_a_non_finite_loss_at_once():
    from seat_tf.diagnostics import DivergenceGuard

    guard = DivergenceGuard(action="stop")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(4, {"loss": float("nan")})
    assert model.stop_training and "non-finite" in guard.events[0]["reason"]


def test_divergence_guard_rejects_bad_settings():
    from seat_tf.diagnostics import DivergenceGuard

    with pytest.raises(ValueError, match="factor"):
        DivergenceGuard(factor=0.5)
    with pytest.raises(ValueError, match="action"):
        DivergenceGuard(action="warn")
    with pytest.raises(ValueError, match="drift_factor"):
        DivergenceGuard(drift_factor=1.5)
    with pytest.raises(ValueError, match="on_drift"):
        DivergenceGuard(on_drift="stop")
    with pytest.raises(ValueError, match="drift_factor"):
        DivergenceGuard(on_drift="double_backprop", drift_factor=None)
    with pytest.raises(ValueError, match="good_factor"):
        DivergenceGuard(factor=10.0, good_factor=20.0)


def test_collapse_rule_flags_gradient_masking_against_a_gradient_free_attack():
    """The eps-0.3 stretch run of 3 epochs (seed 0): PGD-10 0.696, 100 Square queries 0.560 on
    500 test images; the 2-epoch run that did not mask stays under the gap."""
    record = dict(pgd_accuracy=0.696, fgsm_accuracy=0.75, blackbox_accuracy=0.560)
    (reason,) = diagnostics.collapse_reasons(record, 0.6)
    assert "gradient masking" in reason and "0.136" in reason
    assert diagnostics.collapse_reasons(record, 0.6, max_masking_gap=None) == []
    assert diagnostics.collapse_reasons(record, 0.6, max_masking_gap=0.2) == []
    assert diagnostics.collapse_reasons(dict(record, blackbox_accuracy=0.65), 0.6) == []
    assert diagnostics.collapse_reasons(dict(record, blackbox_accuracy=None), 0.6) == []


def _tempered_linear(temperature):
    """A fixed linear classifier on 4x4 images whose logits are multiplied by `temperature`:
    at 1e4 the softmax saturates in float32, so cross-entropy gradients vanish exactly (the
    textbook gradient masking) while the function's decisions stay those of temperature 1."""
    rng = np.random.default_rng(0)
    inputs = keras.Input(shape=(4, 4, 1))
    dense = keras.layers.Dense(2)
    logits = keras.layers.Rescaling(temperature)(dense(keras.layers.Flatten()(inputs)))
    model = keras.Model(inputs, logits)
    dense.set_weights([rng.choice([-1.0, 1.0], size=(16, 2)).astype(np.float32), np.zeros(2, np.float32)])
    return model


def test_co_monitor_catches_gradient_masking_that_pgd_rules_cannot_see():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.3, 0.7, (128, 4, 4, 1)).astype(np.float32)
    clean = _tempered_linear(1.0)
    y = np.argmax(clean.predict(x, verbose=0), axis=-1).astype(np.int32)  # every example correct
    eps = 0.25  # large enough that PGD leaves nothing on the untempered model (asserted below)
    results = {}
    for temperature in (1.0, 1e4):
        monitor = diagnostics.CatastrophicOverfittingMonitor(x, y, eps, attack="pgd10", blackbox_attack="square100")
        monitor.set_model(_tempered_linear(temperature))
        logs = {}
        monitor.on_epoch_end(0, logs)
        results[temperature] = (monitor.records[0], logs)
    honest, _ = results[1.0]
    assert honest["pgd_accuracy"] == 0.0 and not honest["collapsed"]
    masked, logs = results[1e4]
    # Same decisions, but PGD's gradients are gone: it leaves most examples standing, where
    # the gradient-free attack (forward passes only) still breaks them.
    assert masked["pgd_accuracy"] > 0.5 and masked["blackbox_accuracy"] < 0.2
    assert masked["collapsed"] and any("gradient masking" in r for r in masked["reasons"])
    assert logs["co_blackbox_accuracy"] == pytest.approx(masked["blackbox_accuracy"]) and logs["co_collapsed"] == 1.0
