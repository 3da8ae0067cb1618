import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf


def _twin(make_tiny_cnn, seed=0):
    """Two classifiers with identical weights."""
    a = make_tiny_cnn(seed=seed)
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    return a, b


def _one_step(model, x, y, lr=0.1):
    model.compile(optimizer=keras.optimizers.SGD(lr))
    model.train_on_batch(x, y)
    return model.classifier.get_weights()


def test_seat_reduces_to_fgsm_at(make_tiny_cnn, toy_data):
    """lam=0, no flooding, CE attack from a zero start with step eps is exactly FGSM-AT."""
    x, y = toy_data
    a, b = _twin(make_tiny_cnn)
    seat = seat_tf.SEATModel(a, epsilon=0.1, lam=0.0, flood_level=None, variant=dict(attack_loss="ce", init="zero"))
    fgsm = seat_tf.FGSMATModel(b, epsilon=0.1)
    for wa, wb in zip(_one_step(seat, x, y), _one_step(fgsm, x, y)):
        np.testing.assert_allclose(wa, wb, atol=1e-6)


class _AlwaysCleanGradient(seat_tf.SEATModel):
    """SEAT that computes grad_x l(x) (and so the linearity term, at weight lam) whatever lam is."""

    clean_pass = "gradient"


def test_seat_without_the_term_skips_the_clean_gradient_and_trains_the_same(make_tiny_cnn, toy_data):
    """lam 0 in attack and objective: the step skips grad_x l(x) and logs no linearity error,
    and its weights are those of the step that computes the term at weight 0."""
    x, y = toy_data
    a, b = _twin(make_tiny_cnn)
    recipe = dict(epsilon=0.1, lam=0.0, seed=3, variant=dict(attack_steps=3, init="uniform", rel_step_size=0.5))
    lean, full = seat_tf.SEATModel(a, **recipe), _AlwaysCleanGradient(b, **recipe)
    assert lean.clean_pass == "value"
    for wa, wb in zip(_one_step(lean, x, y), _one_step(full, x, y)):
        np.testing.assert_allclose(wa, wb, atol=1e-6)
    lean_logs = lean.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    full_logs = full.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert "linearity_error" not in lean_logs and "linearity_error" in full_logs
    assert lean_logs["clean_accuracy"] == pytest.approx(full_logs["clean_accuracy"])
    # Any weight on the term, in the attack or the objective, needs the clean gradient.
    for lam, attack_lam in ((0.5, None), (0.0, 0.5), (0.5, 0.0)):
        model = seat_tf.SEATModel(make_tiny_cnn(), lam=lam, variant=dict(attack_lam=attack_lam))
        assert model.clean_pass == "gradient", (lam, attack_lam)
    assert seat_tf.SEATModel(make_tiny_cnn(), lam=0.0, variant=dict(double_backprop=True)).clean_pass == (
        "differentiable_gradient")


def test_seat_step_differs_from_fgsm_when_regularized(make_tiny_cnn, toy_data):
    x, y = toy_data
    a, b = _twin(make_tiny_cnn)
    seat = seat_tf.SEATModel(a, epsilon=0.1, lam=0.5, variant=dict(attack_loss="ce", init="zero"))
    fgsm = seat_tf.FGSMATModel(b, epsilon=0.1)
    diffs = [np.abs(wa - wb).max() for wa, wb in zip(_one_step(seat, x, y), _one_step(fgsm, x, y))]
    assert max(diffs) > 1e-5


def test_fit_reduces_training_loss_and_logs_metrics(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.05, lam=0.5, flood_level=0.05, val_attack="pgd3")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, y, batch_size=32, epochs=6, validation_data=(x, y), verbose=0).history
    for key in ["loss", "clean_accuracy", "adv_accuracy", "linearity_error", "val_loss", "val_clean_accuracy",
                "val_robust_accuracy"]:
        assert key in history, key
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_clean_accuracy"][-1] > 0.6
    assert history["val_robust_accuracy"][-1] <= history["val_clean_accuracy"][-1]


def test_val_attack_none_reports_clean_metrics_only(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.05, val_attack=None)
    model.compile(optimizer="sgd")
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert "robust_accuracy" not in logs and "clean_accuracy" in logs


@pytest.mark.parametrize("name", sorted(seat_tf.METHODS))
def test_keras_archive_round_trip(tmp_path, make_tiny_cnn, toy_data, name):
    x, y = toy_data
    model = seat_tf.get_method(name)(make_tiny_cnn(), epsilon=0.05, val_attack="pgd2")
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects needed
    assert type(loaded) is type(model)
    without_classifier = lambda config: {k: v for k, v in config.items() if k != "classifier"}  # noqa: E731
    assert without_classifier(loaded.get_config()) == without_classifier(model.get_config())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_predict_is_the_plain_classifier(make_tiny_cnn, toy_data):
    x, _ = toy_data
    classifier = make_tiny_cnn()
    model = seat_tf.SEATModel(classifier, epsilon=0.1)
    np.testing.assert_allclose(model.predict(x, verbose=0), classifier.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "x_fn, y_fn, message",
    [
        (lambda x: x * 255.0, lambda y: y, "0-255"),
        (lambda x: (x * 255).astype(np.uint8), lambda y: y, "floats in \\[0, 1\\]"),
        (lambda x: x[..., 0].reshape(len(x), -1), lambda y: y, "rank 4"),
        (lambda x: x, lambda y: y + 5, "Labels must lie in"),
        (lambda x: x, lambda y: np.eye(3)[y], "one-hot"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_tiny_cnn, toy_data, x_fn, y_fn, message):
    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=message):
        model.fit(x_fn(x), y_fn(y), epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x_fn(x), y_fn(y))).batch(16)
    with pytest.raises(ValueError, match=message):
        model.fit(dataset, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epsilon=-0.1), "epsilon"),
        (dict(epsilon=8), "8/255"),
        (dict(lam=-1.0), "lam"),
        (dict(flood_level=-0.1), "flood_level"),
        (dict(init="gaussian"), "init"),
        (dict(reduction="sum"), "reduction"),
        (dict(attack_loss="kl"), "attack_loss"),
        (dict(reduction="batch", linearity_clip=1.0), "cannot be combined"),
    ],
)
def test_bad_hyperparameters_raise(make_tiny_cnn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        seat_tf.SEATModel.from_preset("default", make_tiny_cnn(), **kwargs)


def test_global_batch_reductions_have_the_right_value_and_gradient(make_tiny_cnn):
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    values = tf.Variable([0.1, 0.5, -0.3, 0.9])
    with tf.GradientTape(persistent=True) as tape:
        mean = model.batch_mean(values)
        absolute = model.abs_of_batch_mean(values, offset=0.5)
        flooded_below = model.flooded_mean(values, level=0.6)
        flooded_above = model.flooded_mean(values, level=0.1)
    assert float(mean) == pytest.approx(0.3)
    assert float(absolute) == pytest.approx(0.2)
    assert float(flooded_below) == pytest.approx(0.9)  # |0.3 - 0.6| + 0.6
    assert float(flooded_above) == pytest.approx(0.3)
    np.testing.assert_allclose(tape.gradient(flooded_below, values).numpy(), -0.25)  # ascent below b
    np.testing.assert_allclose(tape.gradient(flooded_above, values).numpy(), 0.25)


def test_batch_and_double_backprop_variants_train(make_tiny_cnn, toy_data):
    x, y = toy_data
    weights = {}
    for variant in [dict(), dict(reduction="batch"), dict(double_backprop=True), dict(linearity_clip=0.01),
                    dict(clean_loss_gradient=True)]:
        model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1, lam=2.0, variant=dict(init="zero", **variant))
        weights[str(variant)] = _one_step(model, x, y)[0]
    reference = weights[str(dict())]
    for key, value in weights.items():
        assert np.all(np.isfinite(value)), key
        if key != str(dict()):
            assert np.abs(value - reference).max() > 1e-7, f"{key} had no effect"


def test_epsilon_warmup_ramps_linearly(make_tiny_cnn, toy_data):
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.2, epsilon_warmup_steps=4)
    model.compile(optimizer="sgd")
    assert float(model.current_epsilon()) == pytest.approx(0.05)
    model.optimizer.iterations.assign(3)
    assert float(model.current_epsilon()) == pytest.approx(0.2)
    model.optimizer.iterations.assign(100)
    assert float(model.current_epsilon()) == pytest.approx(0.2)


# How far each method's training perturbation may reach, in units of the step's eps:
# N-FGSM's unprojected noise of 2 eps plus a step of eps; everyone else stays in the ball.
REACH = {"n_fgsm": 3.0}
WARMUP_OPTIONS = {"pgd_at": dict(steps=2), "trades": dict(steps=2)}


@pytest.mark.parametrize("method", sorted(seat_tf.METHODS))
def test_every_methods_training_attack_follows_the_warmup_eps(method, make_tiny_cnn, toy_data):
    """The ramp must reach the attack, not only current_epsilon(): step t (1-based) of a
    4-step warm-up may move no pixel further than reach * eps * t / 4."""
    x, y = toy_data
    eps, warmup = 0.2, 4
    model = seat_tf.get_method(method)(make_tiny_cnn(), epsilon=eps, epsilon_warmup_steps=warmup,
                                       **WARMUP_OPTIONS.get(method, {}))
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    reached = []
    perturb = model.perturb

    def recording_perturb(xs, ys, epsilon, clean):
        x_adv = perturb(xs, ys, epsilon, clean)
        reached.append(float(tf.reduce_max(tf.abs(x_adv - xs))))
        return x_adv

    model.perturb = recording_perturb
    model.fit(x[:32], y[:32], batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert len(reached) == warmup
    reach = REACH.get(method, 1.0)
    for step, value in enumerate(reached, start=1):
        assert value <= reach * eps * step / warmup + 1e-6, (step, reached)
    assert reached[-1] > 0.5 * eps, reached  # at full eps the attack does move the images


def test_seat_training_perturbation_respects_eps(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    model.compile(optimizer="sgd")
    x_t, y_t = tf.constant(x), tf.constant(y)
    clean = model.compute_clean_pass(x_t, y_t, tf.GradientTape())
    x_adv = model.perturb(x_t, y_t, tf.constant(0.1), clean).numpy()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # corner start + one step of eps, projected: each pixel moves by 0 or exactly eps (unless clipped)
    moved = np.abs(x_adv - x)
    interior = (x > 0.1) & (x < 0.9)
    assert np.all(np.isclose(moved[interior], 0, atol=1e-6) | np.isclose(moved[interior], 0.1, atol=1e-6))


def test_seat_presets_reach_the_paper_and_the_authors_code(make_tiny_cnn):
    from seat_tf.training.seat import PRESETS

    paper = seat_tf.SEATModel.from_preset("paper", make_tiny_cnn(), epsilon=0.1)
    v = paper.variant
    assert (paper.lam, v.margin_on, v.reduction, v.clean_loss_gradient, v.init) == (
        0.5, "logits", "example", True, "corner")
    authors = seat_tf.SEATModel.from_preset("authors_code", make_tiny_cnn(), epsilon=0.1, lam=0.3)
    assert (authors.lam, authors.variant.margin_on, authors.variant.reduction) == (0.3, "probs", "batch")
    default = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    assert default.variant == seat_tf.SEATVariant() and not default.variant.clean_loss_gradient
    assert set(PRESETS) == {"default", "paper", "authors_code"}
    with pytest.raises(ValueError, match="Unknown SEAT preset"):
        seat_tf.SEATModel.from_preset("papers", make_tiny_cnn())
    with pytest.raises(ValueError, match="Unknown SEAT preset"):
        seat_tf.SEATModel(make_tiny_cnn(), variant="papers")


def test_seat_variant_is_one_argument_in_three_spellings(make_tiny_cnn):
    """A preset name, a dict over the default and a SEATVariant build the same method; flat
    keyword overrides of from_preset land in the variant; bad fields are named."""
    spellings = [
        seat_tf.SEATModel(make_tiny_cnn(), variant=seat_tf.SEATVariant(margin_on="probs", reduction="batch",
                                                                       clean_loss_gradient=True)),
        seat_tf.SEATModel(make_tiny_cnn(), variant=dict(margin_on="probs", reduction="batch",
                                                        clean_loss_gradient=True)),
        seat_tf.SEATModel(make_tiny_cnn(), variant="authors_code"),
        seat_tf.SEATModel.from_preset("default", make_tiny_cnn(), margin_on="probs", reduction="batch",
                                      clean_loss_gradient=True),
    ]
    assert len({m.variant for m in spellings}) == 1
    assert spellings[3].lam == 0.5 and seat_tf.SEATModel.from_preset("authors_code", make_tiny_cnn()).lam == 0.6
    with pytest.raises(ValueError, match=r"Unknown SEAT variant option\(s\) \['margin'\]"):
        seat_tf.SEATModel(make_tiny_cnn(), variant=dict(margin="probs"))
    with pytest.raises(ValueError, match=r"belong to SEAT's variant: pass variant=dict\(reduction=\.\.\.\)"):
        seat_tf.SEATModel(make_tiny_cnn(), reduction="batch")  # a variant field is not a constructor switch


def test_seat_variant_survives_save_and_loads_a_flat_legacy_config(make_tiny_cnn, tmp_path):
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1, lam=0.7,
                              variant=dict(init="uniform", rel_step_size=1.25, linearity_clip=2.0))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.variant == model.variant and loaded.lam == 0.7
    # seat-tf 0.1 wrote the variant's fields flat into the config: they still load.
    legacy = model.get_config()
    legacy.pop("variant")
    legacy.update(init="zero", margin_on="probs", reduction="example", clean_loss_gradient=True)
    rebuilt = seat_tf.SEATModel.from_config(legacy)
    assert rebuilt.variant == seat_tf.SEATVariant(init="zero", margin_on="probs", clean_loss_gradient=True)


def test_config_preset_builds_the_named_seat(tmp_path):
    import ml_collections

    from seat_tf import experiment

    config = experiment.base_config()
    config.dataset.name = "fashion_mnist"
    config.method = ml_collections.ConfigDict(dict(name="seat", epsilon=0.1, preset="authors_code"))
    model = experiment.build_model(config, total_steps=10)
    assert (model.variant.margin_on, model.variant.reduction, model.lam) == ("probs", "batch", 0.6)
    config.method = ml_collections.ConfigDict(dict(name="pgd_at", epsilon=0.1, preset="paper"))
    with pytest.raises(ValueError, match="only known for SEAT"):
        experiment.validate(config)
