"""The shipped classifiers: their in-model standardization against NumPy, and their
architecture against closed-form shapes and parameter counts (independent of Keras' own
bookkeeping: the counts are written out from the layer sizes)."""

import numpy as np
import pytest

from seat_tf import models
from seat_tf.models.normalization import DATASET_STATS, standardize


def _conv(c_in, c_out, k=3, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_standardize_is_the_per_channel_z_score():
    mean, std = (0.1, 0.5, 0.9), (0.5, 0.25, 2.0)
    x = np.random.default_rng(0).uniform(size=(4, 5, 5, 3)).astype(np.float32)
    got = np.asarray(standardize(mean, std)(x))
    want = (x - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_small_cnn_standardizes_its_input_before_the_first_convolution():
    """The normalized CNN on x equals the same weights without normalization on (x - m) / s:
    the input statistics enter exactly once, as a z-score, and nowhere else."""
    mean, std = (0.3,), (0.5,)
    normalized = models.small_cnn(mean=mean, std=std, width=4)
    plain = models.small_cnn(mean=(0.0,), std=(1.0,), width=4)
    for layer in normalized.layers:
        if layer.name != "standardize" and layer.weights:
            plain.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(1).uniform(size=(6, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(normalized(x)), np.asarray(plain((x - 0.3) / 0.5)), rtol=1e-4, atol=1e-5)
    # The default statistics are Fashion-MNIST's (the data the small CNN is for).
    default = models.small_cnn(width=4)
    stats = default.get_layer("standardize")(np.ones((1, 1, 1, 1), np.float32))
    np.testing.assert_allclose(np.asarray(stats), (1 - 0.2860) / 0.3530, rtol=1e-5)


@pytest.mark.parametrize("width", [4, 32])
def test_small_cnn_architecture(width):
    model = models.small_cnn(width=width)
    w1, w2, w3 = width, 2 * width, 4 * width
    flat = 3 * 3 * w3  # 28 -> 14 -> 7 -> 3 after three 2x2 poolings
    want = _conv(1, w1) + _conv(w1, w2) + _conv(w2, w3) + (flat * w3 + w3) + (w3 * 10 + 10)
    assert model.count_params() == want
    assert model.get_layer("flatten").output.shape[-1] == flat
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


def test_preact_resnet18_architecture():
    model = models.preact_resnet18()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    bn = lambda c: 2 * c  # noqa: E731  (gamma and beta; the moving statistics are not trained)
    want = _conv(3, 64, bias=False)
    c_in = 64
    for c in (64, 128, 256, 512):
        for block in range(2):
            shortcut = _conv(c_in, c, k=1, bias=False) if c_in != c else 0
            want += bn(c_in) + _conv(c_in, c, bias=False) + bn(c) + _conv(c, c, bias=False) + shortcut
            c_in = c
    want += bn(512) + 512 * 10 + 10  # final BN before pooling (as in the SEAT / fast-AT code), linear head
    assert trainable == want == 11_172_170
    # Resolution halves at the first block of stages 2-4: 32, 16, 8, 4.
    for stage, size in zip(range(1, 5), (32, 16, 8, 4)):
        assert model.get_layer(f"stage{stage}_block2_add").output.shape[1:3] == (size, size)
    # Pre-activation: a projection shortcut reads the block's BN-ReLU output, an identity one the raw input.
    block = "stage2_block1"
    assert model.get_layer(f"{block}_shortcut").input is model.get_layer(f"{block}_relu1").output
    add_inputs = model.get_layer("stage1_block2_add").input
    assert add_inputs[1] is model.get_layer("stage1_block1_add").output
    # CIFAR-10 statistics by default, inside the model.
    mean, std = DATASET_STATS["cifar10"]
    x = np.full((1, 1, 1, 3), 0.5, np.float32)
    np.testing.assert_allclose(np.asarray(model.get_layer("standardize")(x))[0, 0, 0],
                               (0.5 - np.array(mean)) / np.array(std), rtol=1e-5)
