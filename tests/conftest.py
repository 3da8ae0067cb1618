"""Shared fixtures: tiny models and generated data, so tests run in seconds on a CPU."""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_module():
    """run(module, *args): `python -m module args` in a fresh process from the repository root
    (this checkout on PYTHONPATH); returns the CompletedProcess with text stdout/stderr."""

    def run(module, *args, timeout=600):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=timeout)

    return run


@pytest.fixture
def cli(run_module):
    """cli(*args): the `seat-tf` command line in a fresh process."""
    return lambda *args, **kwargs: run_module("seat_tf.cli", *args, **kwargs)


@pytest.fixture
def fake_fmnist_npz(tmp_path):
    """A .npz of random 28x28 uint8 images (128 train, 64 test, 10 classes) for CLI runs."""
    rng = np.random.default_rng(0)
    path = str(tmp_path / "fake_fmnist.npz")
    np.savez(path, x_train=rng.integers(0, 256, (128, 28, 28), dtype=np.uint8), y_train=np.arange(128) % 10,
             x_test=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y_test=np.arange(64) % 10)
    return path


def linear_classifier(weights, bias, input_shape):
    """logits = flatten(x) @ weights + bias, with fixed weights [D, K] (closed-form tests)."""
    inputs = keras.Input(shape=input_shape)
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(weights.shape[1], name="linear")
    logits = dense(flat)
    model = keras.Model(inputs, logits)
    dense.set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
    return model


def without_keys(result, keys=("seconds", "total_seconds", "loaded", "model")):
    """An evaluation result (nested dicts and lists) without the given keys: what two runs
    of the same evaluation must agree on (wall-clock times, where results came from and the
    model's path aside)."""
    if isinstance(result, dict):
        return {k: without_keys(v, keys) for k, v in result.items() if k not in keys}
    return [without_keys(v, keys) for v in result] if isinstance(result, list) else result


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


@pytest.fixture
def recorded_starts(monkeypatch):
    """A list that collects every random start the attack engine draws (the delta that
    seat_tf.attacks.random_start returns), so closed-form tests can replay the attack."""
    from seat_tf import attacks
    from seat_tf.attacks import engine

    starts = []
    original = engine.random_start

    def recording(x, radius, init, seed=None):
        delta = original(x, radius, init, seed)
        starts.append(delta.numpy())
        return delta

    # The engine calls its own module's function; methods call it through the package.
    monkeypatch.setattr(engine, "random_start", recording)
    monkeypatch.setattr(attacks, "random_start", recording)
    return starts


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    tf.random.set_seed(0)
