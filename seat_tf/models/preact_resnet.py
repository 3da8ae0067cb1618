"""PreActResNet18 (He et al., 2016, identity mappings) for 32x32 images, as in the SEAT paper."""

import keras

from seat_tf.models.normalization import DATASET_STATS, standardize


def _bn(name):
    # PyTorch's BatchNorm2d defaults (momentum 0.1, eps 1e-5), as in the reference code.
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _preact_block(x, filters, stride, name):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1 conv) shortcut."""
    out = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(x))
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_shortcut")(out)
    else:
        shortcut = x
    out = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2")(out))
    out = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(out)
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def preact_resnet18(input_shape=(32, 32, 3), num_classes=10, mean=None, std=None, width=64):
    """PreActResNet18: stem conv, four stages of two pre-activation blocks (width, 2x, 4x,
    8x filters), BN-ReLU, global average pooling, linear head. Inputs in [0, 1], logits out.

    mean/std default to CIFAR-10's channel statistics.
    """
    default_mean, default_std = DATASET_STATS["cifar10"]
    inputs = keras.Input(shape=input_shape, name="image")
    x = standardize(mean or default_mean, std or default_std)(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(x)
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            x = _preact_block(x, width * multiplier, stride, name=f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.ReLU(name="final_relu")(_bn("final_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="preact_resnet18")
