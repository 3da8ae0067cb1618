"""Mixed precision (float16 / bfloat16) and XLA: numerically sound attacks, finite training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import distribute, experiment, losses, precision


def _classifier(policy, seed=0, logit_scale=1.0):
    """A tiny CNN built under `policy`, logits layer in float32 (as the bundled models)."""
    keras.utils.set_random_seed(seed)
    with precision.dtype_policy(policy):
        inputs = keras.Input(shape=(8, 8, 1))
        h = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inputs)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(16, activation="relu")(h)
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(h))
    weights = model.get_weights()
    weights[-2] *= logit_scale
    model.set_weights(weights)
    return model


@pytest.fixture
def confident_pair(toy_data):
    """The same weights in float32 and mixed_float16, scaled so that most examples are
    classified with p > 1 - 1e-6: their cross-entropy gradients underflow in float16."""
    x, _ = toy_data
    f32 = _classifier("float32", logit_scale=60.0)
    f16 = _classifier("mixed_float16")
    f16.set_weights(f32.get_weights())
    y = tf.argmax(f32(x), axis=-1, output_type=tf.int32)  # confident *and* correct
    return f32, f16, tf.constant(x), y


def _ce_input_gradient(logits_fn, x, y):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = losses.cross_entropy(y, logits_fn(x))
    return tape.gradient(loss, x).numpy()


def _zero_examples(grad):
    return float(np.mean(np.all(grad.reshape(len(grad), -1) == 0, axis=1)))


def test_float16_attack_gradients_do_not_underflow_to_zero_signs(confident_pair):
    f32, f16, x, y = confident_pair
    reference = _ce_input_gradient(lambda v: f32(v), x, y)
    plain = _ce_input_gradient(lambda v: tf.cast(f16(v), tf.float32), x, y)
    safe = _ce_input_gradient(precision.float16_safe_logits(f16, training=False), x, y)
    assert _zero_examples(reference) == 0.0
    assert _zero_examples(plain) > 0.3  # the failure the rescaling exists for
    assert _zero_examples(safe) == 0.0
    assert np.mean(np.sign(safe) == np.sign(reference)) > 0.95
    per_example_cosine = np.sum(safe * reference, axis=(1, 2, 3)) / (
        np.linalg.norm(safe.reshape(len(x), -1), axis=1) * np.linalg.norm(reference.reshape(len(x), -1), axis=1))
    assert per_example_cosine.min() > 0.95


def test_float16_safe_logits_gives_correct_weight_gradients(confident_pair):
    _, f16, x, y = confident_pair
    logits_fn = precision.float16_safe_logits(f16, training=False)
    with tf.GradientTape(persistent=True) as tape:
        plain = tf.reduce_mean(losses.cross_entropy(y, tf.cast(f16(x), tf.float32)) * 1e3)
        safe = tf.reduce_mean(losses.cross_entropy(y, logits_fn(x)) * 1e3)
    for a, b in zip(tape.gradient(plain, f16.trainable_variables), tape.gradient(safe, f16.trainable_variables)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)


def test_seat_clean_pass_and_attack_under_float16_match_float32(confident_pair):
    f32, f16, x, y = confident_pair
    grads, deltas = [], []
    for classifier in (f32, f16):
        model = seat_tf.SEATModel(classifier, epsilon=0.1, variant=dict(attack_loss="ce", init="zero"), val_attack=None)
        model.compile(optimizer="sgd")
        clean = model.compute_clean_pass(x, y, tf.GradientTape())
        grads.append(clean.grad.numpy())
        deltas.append((model.perturb(x, y, tf.constant(0.1), clean) - x).numpy())
    assert _zero_examples(grads[1]) == 0.0
    np.testing.assert_allclose(grads[1], grads[0], rtol=0.1, atol=1e-3 * np.abs(grads[0]).max())
    # Every example moves (no stalled zero-sign step), mostly as in float32.
    assert np.abs(deltas[1]).reshape(len(x), -1).max(axis=1).min() > 0.09
    assert np.mean(np.sign(deltas[1]) == np.sign(deltas[0])) > 0.9


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_is_finite_and_perturbation_respects_eps(toy_data, policy):
    x, y = toy_data
    eps = 0.1
    with precision.dtype_policy(policy):
        model = seat_tf.SEATModel(_classifier(policy), epsilon=eps, lam=0.5, flood_level=0.1, val_attack="pgd2")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    assert keras.config.dtype_policy().name == "float32"  # the policy did not leak
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=32, epochs=2, validation_data=(x, y), verbose=0).history
    for key in ("loss", "linearity_error", "val_robust_accuracy"):
        assert np.all(np.isfinite(history[key])), (key, history[key])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    xb, yb = tf.constant(x[:32]), tf.constant(y[:32])
    clean = model.compute_clean_pass(xb, yb, tf.GradientTape())
    x_adv = model.perturb(xb, yb, tf.constant(eps), clean).numpy()
    delta = np.abs(x_adv - x[:32])
    assert delta.max() <= eps + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.mean(delta > 0.5 * eps) > 0.5  # and it is a real perturbation


def test_evaluate_float16_model_attacks_make_progress(confident_pair):
    f32, f16, x, y = confident_pair
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(48)
    r32 = seat_tf.evaluate(f32, dataset, attacks=["pgd5"], eps=0.3, verbose=0)
    r16 = seat_tf.evaluate(f16, dataset, attacks=["pgd5"], eps=0.3, verbose=0)
    assert r32["clean_accuracy"] == r16["clean_accuracy"] == 1.0
    assert r32["attacks"]["pgd5"]["robust_accuracy"] < 0.9  # the attack works in float32 ...
    assert abs(r16["attacks"]["pgd5"]["robust_accuracy"] - r32["attacks"]["pgd5"]["robust_accuracy"]) <= 0.1  # ... and float16


def test_experiment_builds_mixed_precision_models_and_rejects_unknown_policies():
    from configs.fashion_mnist_seat import get_config

    config = get_config("smoke")
    config.mixed_precision = "mixed_float16"
    experiment.validate(config)
    model = experiment.build_model(config, total_steps=10)
    assert model.classifier.layers[-1].dtype_policy.name == "float32"
    assert model.classifier.get_layer("conv1").dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"
    config.mixed_precision = "float8"
    with pytest.raises(ValueError, match="mixed-precision policy"):
        experiment.validate(config)


# -- XLA ------------------------------------------------------------------------------------


def test_xla_train_step_matches_the_graph_step(make_tiny_cnn, toy_data):
    """Zero start: XLA's stateless RNG is another stream than TF's kernels (same seed, other
    noise), so equality is checked without random starts."""
    x, y = toy_data
    weights = []
    for jit_compile in (False, True):
        model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1, lam=0.5, flood_level=0.1, variant=dict(init="zero"),
                                  val_attack=None)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
        assert model.jit_compile == jit_compile
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
        weights.append(model.classifier.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_xla_with_several_replicas_is_refused_clearly():
    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(ValueError, match="jit_compile=True is not supported"):
        distribute.check_jit_compile(TwoReplicas(), True)
    distribute.check_jit_compile(TwoReplicas(), False)
    distribute.check_jit_compile(tf.distribute.get_strategy(), True)
