"""first_layer_centring: the classifier's first layer trains as if its input were centred.

The reference is independent of the reparametrization: the same classifier with the mean
subtracted *in the model* (a Normalization layer, its first bias shifted so both compute the
same function), trained without centring. Training the raw classifier with centring must
follow it step by step: same function, kernel equal, bias equal to the twin's minus W^T m."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf.validation import UncenteredInputWarning


def _classifier(kind, centre=None, seed=0):
    """A raw classifier ("dense": an MLP on the flattened image; "conv": a valid 3x3
    convolution first) or, with `centre`, the same with the mean subtracted in the model."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(6, 6, 1))
    h = inputs
    if centre is not None:
        h = keras.layers.Normalization(mean=[centre], variance=[1.0])(h)
    if kind == "dense":
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(12, activation="relu", name="first")(h)
    else:
        h = keras.layers.Conv2D(4, 3, padding="valid", activation="relu", name="first")(h)
        h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.uniform(0.0, 0.5, (n, 6, 6, 1)).astype(np.float32)  # mean 0.25: uncentred
    for k in range(3):
        x[y == k, 2 * k : 2 * k + 2, :, 0] += 0.45
    return np.clip(x, 0, 1), y


def _folded_bias(kernel, bias, centre):
    """The bias c of the centred twin that computes the same function: c = b + W^T m."""
    return bias + centre * kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)


def _train(classifier, x, y, method, centring, epochs=3, **kwargs):
    model = method(classifier, epsilon=0.1, seed=3, val_attack=None, first_layer_centring=centring, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=epochs, verbose=0)
    return model


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("method", [seat_tf.SEATModel, seat_tf.PGDATModel])
def test_centred_training_follows_the_classifier_with_the_mean_subtracted_in_the_model(kind, method):
    x, y = _data()
    centre = 0.3
    raw = _classifier(kind)
    twin = _classifier(kind, centre=centre)
    first = raw.get_layer("first")
    twin.get_layer("first").set_weights([first.kernel.numpy(), _folded_bias(*first.get_weights(), centre)])
    twin.layers[-1].set_weights(raw.layers[-1].get_weights())
    np.testing.assert_allclose(raw.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-5)

    trained = _train(raw, x, y, method, (centre,)).classifier
    reference = _train(twin, x, y, method, "off").classifier
    # The function is the user's classifier at every step: the raw model still needs no
    # Normalization, and it computes what the twin computes.
    np.testing.assert_allclose(trained.predict(x, verbose=0), reference.predict(x, verbose=0), atol=2e-4)
    kernel, bias = trained.get_layer("first").get_weights()
    twin_kernel, twin_bias = reference.get_layer("first").get_weights()
    np.testing.assert_allclose(kernel, twin_kernel, atol=2e-4)
    np.testing.assert_allclose(_folded_bias(kernel, bias, centre), twin_bias, atol=2e-4)

    # Control: without centring the raw classifier trains to different weights.
    uncentred = _train(_classifier(kind), x, y, method, "off").classifier  # same seed: raw's initial weights
    assert np.abs(uncentred.get_layer("first").kernel.numpy() - twin_kernel).max() > 1e-2


def test_auto_centres_on_the_first_batchs_channel_means_and_is_silent():
    x, y = _data()
    model = seat_tf.SEATModel(_classifier("conv"), epsilon=0.1, val_attack=None)
    assert model.first_layer_centring == "auto"  # SEAT's default
    model.compile(optimizer="adam")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
    assert not [w for w in caught if issubclass(w.category, UncenteredInputWarning)]
    assert model.centring is not None and model.centring.layer.name == "first"
    np.testing.assert_allclose(model.centring.mean, [x[:16].mean()], rtol=1e-5)


def test_auto_leaves_a_centred_classifier_alone_and_off_warns():
    x, y = _data()
    normalized = _classifier("conv", centre=float(x.mean()))
    model = seat_tf.SEATModel(normalized, epsilon=0.1, val_attack=None)
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.centring is None

    model = seat_tf.SEATModel(_classifier("conv"), epsilon=0.1, val_attack=None, first_layer_centring="off")
    model.compile(optimizer="adam")
    with pytest.warns(UncenteredInputWarning, match="first_layer_centring='auto'"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.centring is None
    # Baselines keep their 0.1 behaviour (their records): off unless asked.
    assert seat_tf.PGDATModel(_classifier("conv"), epsilon=0.1).first_layer_centring == "off"


def test_centring_setting_round_trips_and_bad_values_fail_loudly():
    model = seat_tf.SEATModel(_classifier("dense"), epsilon=0.1, first_layer_centring=(0.25,))
    config = model.get_config()
    assert config["first_layer_centring"] == [0.25]
    assert seat_tf.SEATModel.from_config(config).first_layer_centring == (0.25,)
    for bad in ("sometimes", (), (float("nan"),), 3):
        with pytest.raises(ValueError, match="first_layer_centring"):
            seat_tf.SEATModel(_classifier("dense"), first_layer_centring=bad)
    # Explicit means are checked when the model is built, before anything trains.
    with pytest.raises(ValueError, match="2 channel means"):  # the dense layer has 36 inputs
        seat_tf.SEATModel(_classifier("dense"), epsilon=0.1, first_layer_centring=(0.2, 0.3))
    inputs = keras.Input(shape=(6, 6, 1))
    no_bias = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(
        keras.layers.Conv2D(2, 3, use_bias=False)(inputs))))
    with pytest.raises(ValueError, match="bias"):
        seat_tf.SEATModel(no_bias, epsilon=0.1, first_layer_centring=(0.2,))


def test_explicit_means_also_centre_train_on_batch():
    """train_on_batch does not pass through fit: explicit means still apply there."""
    x, y = _data()
    centre = 0.3
    raw, twin = _classifier("dense"), _classifier("dense", centre=centre)
    first = raw.get_layer("first")
    twin.get_layer("first").set_weights([first.kernel.numpy(), _folded_bias(*first.get_weights(), centre)])
    twin.layers[-1].set_weights(raw.layers[-1].get_weights())
    models = [seat_tf.SEATModel(c, epsilon=0.1, seed=3, val_attack=None, first_layer_centring=setting)
              for c, setting in ((raw, (centre,)), (twin, "off"))]
    for model in models:
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        for _ in range(3):
            model.train_on_batch(x[:16], y[:16])
    np.testing.assert_allclose(raw.predict(x, verbose=0), twin.predict(x, verbose=0), atol=2e-4)
