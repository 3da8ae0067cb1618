"""Shared fixtures: tiny models and generated data, so tests run in seconds on a CPU."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def linear_classifier(weights, bias, input_shape):
    """logits = flatten(x) @ weights + bias, with fixed weights [D, K] (closed-form tests)."""
    inputs = keras.Input(shape=input_shape)
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(weights.shape[1], name="linear")
    logits = dense(flat)
    model = keras.Model(inputs, logits)
    dense.set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
    return model


def tiny_cnn(input_shape=(8, 8, 1), num_classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape)
    h = keras.layers.Conv2D(4, 3, activation="relu", padding="same")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h))


@pytest.fixture
def make_linear():
    return linear_classifier


@pytest.fixture
def make_tiny_cnn():
    return tiny_cnn


@pytest.fixture
def toy_data():
    """Separable 3-class images: class k brightens row band k. (x float32 [N,8,8,1], y int32)."""
    rng = np.random.default_rng(0)
    n = 96
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.uniform(0.0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    for k in range(3):
        x[y == k, 2 * k + 1 : 2 * k + 3, :, 0] += 0.6
    return np.clip(x, 0, 1), y


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    tf.random.set_seed(0)
