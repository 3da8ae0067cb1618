"""Small CNN for 28x28 images (MNIST, Fashion-MNIST): conv32-64-128 + dense128."""

import keras

from seat_tf.models.normalization import standardize


def small_cnn(input_shape=(28, 28, 1), num_classes=10, mean=(0.2860,), std=(0.3530,), width=32):
    """Three 3x3 conv blocks (width, 2*width, 4*width filters, ReLU, 2x2 max-pool), a dense
    layer of 4*width units and a linear head. Inputs in [0, 1], outputs logits.

    The defaults standardize with Fashion-MNIST statistics; pass mean/std for other data.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    h = standardize(mean, std)(inputs)
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(h)
        h = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(4 * width, activation="relu", name="dense")(h)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(h)
    return keras.Model(inputs, logits, name="small_cnn")
