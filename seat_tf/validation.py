"""Input validation, once for every path data enters (fit, evaluate, seat_tf.evaluate, the
loaders, the tuner): images are floats in [0, 1] of the model's shape, labels integer class
ids in [0, K). Failures raise DataError (a ValueError) naming the problem."""

import numpy as np
import tensorflow as tf


def check_eps(eps, name="eps", positive=False):
    """Raises ValueError unless `eps` is a finite number in [0, 1] ((0, 1] with `positive`):
    an L-inf radius in the [0, 1] pixel scale (8/255 for CIFAR-10, not 8). The one eps rule."""
    import math

    low = "(0" if positive else "[0"
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"{name} must be a number in {low}, 1] (pixel scale, e.g. 8/255), got {eps!r}.")
    if eps > 1:
        raise ValueError(f"{name}={eps} exceeds the [0, 1] image range; write 8/255, not 8.")
    if eps < 0 or (positive and eps == 0):
        raise ValueError(f"{name} must be a number in {low}, 1] (pixel scale, e.g. 8/255), got {eps!r}.")


class DataError(ValueError):
    """Input data that cannot be what the model expects: labels out of range or not integer,
    images outside [0, 1] or of the wrong shape. The CLI reports it as a usage error (exit 2)."""


def check_labels(labels, num_classes=None, name="labels"):
    """Raises DataError unless `labels` are integer class ids of shape [N] (or [N, 1]) in
    [0, num_classes) (just >= 0 if num_classes is None). NumPy arrays or eager tensors."""
    y = np.asarray(labels)
    if y.ndim > 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(
            f"{name}: Labels must be integer class ids of shape [batch], got shape {y.shape} "
            "(one-hot labels? use tf.argmax(y, axis=-1))."
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise DataError(f"{name}: Labels must be integer class ids, got dtype {y.dtype}.")
    if not np.issubdtype(y.dtype, np.integer) and y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{name}: Labels must be integer class ids, got non-integer values of dtype {y.dtype}.")
    if not y.size:
        return
    low, high = y.min(), y.max()
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise DataError(
            f"{name}: Labels must lie in [0, {num_classes}) for a model with {num_classes} classes, got values in "
            f"[{low:g}, {high:g}]."
        )
    if low < 0:
        raise DataError(f"{name}: Labels must be class ids >= 0, got a minimum of {low:g}.")


def check_images(images, name="images", allow_uint8=False, input_shape=None):
    """Raises DataError unless `images` are floats in [0, 1] (or uint8 0-255 with
    allow_uint8) of rank 4 [N, H, W, C] (or 3 without channels) matching `input_shape`
    (H, W, C; None entries match anything) if given."""
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise DataError(
            f"{name}: Expected a batch of images of rank 4 [batch, height, width, channels] (or 3 without "
            f"channels), got shape {x.shape}. Batch your tf.data pipeline with .batch(n)."
        )
    if input_shape is not None:
        expected = tuple(input_shape)
        got = tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape[1:]) + (1,)
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
            raise DataError(f"{name}: The model expects images of shape {expected}, got {tuple(x.shape[1:])}.")
    if allow_uint8:
        if x.dtype == np.uint8:
            return
        if not np.issubdtype(x.dtype, np.floating) or (x.size and not (0 <= x.min() and x.max() <= 1)):
            raise DataError(f"{name}: Images must be uint8 (0-255) or float in [0, 1]; got {x.dtype} in "
                            f"[{x.min() if x.size else ''}, {x.max() if x.size else ''}].")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{name}: Images must be floats in [0, 1], got dtype {x.dtype}. Convert with "
            "tf.cast(images, tf.float32) / 255."
        )
    if x.size:
        low, high = x.min(), x.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DataError(f"{name}: Images hold NaN or infinite values.")
        if low < 0.0 or high > 1.0:
            hint = " They look like 0-255 pixel values: divide by 255." if 1.0 + 1e-6 < high <= 255 else ""
            raise DataError(f"{name}: Images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}].{hint}")


def check_batch(x, y=None, num_classes=None, input_shape=None, name="batch"):
    """Raises DataError (a ValueError) with a useful message unless a batch is float images in
    [0, 1] (matching `input_shape` if given) with integer labels in [0, num_classes)."""
    check_images(x, name, input_shape=input_shape)
    if y is None:
        return
    check_labels(y, num_classes, name)
    if np.asarray(y).shape[0] != np.asarray(x).shape[0]:
        raise DataError(f"{name}: {np.asarray(x).shape[0]} images but {np.asarray(y).shape[0]} labels.")


def model_expectations(model):
    """(num_classes, input image shape) a Keras classifier expects, each None if unknown."""
    classifier = getattr(model, "classifier", model)
    num_classes = input_shape = None
    try:
        if classifier.outputs:
            num_classes = classifier.outputs[0].shape[-1]
        if classifier.inputs and len(classifier.inputs[0].shape) == 4:
            input_shape = tuple(classifier.inputs[0].shape[1:])
    except (AttributeError, ValueError):
        pass
    return (int(num_classes) if num_classes else None), input_shape


def check_dataset_head(dataset, num_classes=None, input_shape=None, name="dataset"):
    """Checks the first batch of a tf.data pipeline of (images, labels[, weights]); returns its
    images (None for an empty pipeline), so callers need not read the pipeline again."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise DataError(f"{name}: the dataset must yield (images, labels) pairs, got element_spec {spec}.")
    for element in dataset.take(1):
        images = element[0].numpy()
        check_batch(images, element[1].numpy(), num_classes, input_shape, name)
        return images
    return None


def label_checker(num_classes, name):
    """A tf.data map function asserting labels in [0, num_classes) (for streamed sources)."""

    def check(image, label):
        label = tf.cast(label, tf.int64)
        in_range = tf.logical_and(label >= 0, label < num_classes)
        message = f"{name}: a label lies outside [0, {num_classes}):"
        with tf.control_dependencies([tf.debugging.Assert(in_range, [message, label])]):
            return image, tf.identity(label)

    return check


class UncenteredInputWarning(UserWarning):
    """The classifier's first convolution or dense layer sees inputs far from zero mean."""


# Layers that remove the channel means of what reaches them (directly after the first weighted
# layer, they undo the input's offset for everything downstream).
_CENTRING_LAYERS = ("BatchNormalization", "LayerNormalization", "GroupNormalization")


def _flat_layers(model):
    for layer in getattr(model, "layers", None) or ():
        if getattr(layer, "layers", None):
            yield from _flat_layers(layer)
        else:
            yield layer


def first_weighted_layer(classifier):
    """(the classifier's first layer with a kernel, whether a normalization layer directly
    follows it), or (None, False)."""
    layers = list(_flat_layers(classifier))
    for i, layer in enumerate(layers):
        if getattr(layer, "kernel", None) is not None:
            following = type(layers[i + 1]).__name__ if i + 1 < len(layers) else None
            return layer, following in _CENTRING_LAYERS
    return None, False


def first_layer_input_stats(classifier, images):
    """(layer, per-channel mean, per-channel std) of what the classifier's first convolution
    or dense layer receives on `images`; None if that cannot be read from the model's graph (a
    subclassed model) or the layer is followed by a normalization."""
    import keras

    layer, normalized = first_weighted_layer(classifier)
    if layer is None or normalized:
        return None
    try:
        (image_input,) = classifier.inputs
        probe = keras.Model(image_input, layer.input)
        seen = np.asarray(probe(np.asarray(images, np.float32)), np.float64)
    except Exception:  # nested or subclassed graphs a probe model cannot reach
        return None
    axes = tuple(range(seen.ndim - 1))
    return layer, seen.mean(axis=axes), seen.std(axis=axes)


def is_uncentred(mean, std, max_mean_over_std=0.25):
    """True if a channel's mean exceeds `max_mean_over_std` of its std."""
    return bool(np.any(np.abs(mean) / np.maximum(std, 1e-8) > max_mean_over_std))


def warn_if_uncentred(classifier, images, max_mean_over_std=0.25, stats=None):
    """Warns (UncenteredInputWarning) when the classifier's first weighted layer gets inputs
    whose channel mean exceeds `max_mean_over_std` of their std: adversarial training on such a
    classifier ends measurably less robust, and the fix is one layer. `stats`: the
    `first_layer_input_stats` of `images` if the caller has them already. Returns the warning
    text or None."""
    if stats is None:
        stats = first_layer_input_stats(classifier, images)
    if stats is None:
        return None
    layer, mean, std = stats
    if not is_uncentred(mean, std, max_mean_over_std):
        return None
    name = layer.name
    message = (
        f"{classifier.name}: its first layer {name!r} sees uncentred inputs (channel mean "
        f"{np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}). Adversarial training ends measurably less "
        "robust on such a classifier (Fashion-MNIST, eps 0.2: SEAT's PGD-20 4 points lower, PGD-10-AT's 2, and "
        "subtracting the mean alone recovers SEAT's; README, 'SEAT on your own classifier'). Put "
        "seat_tf.models.standardize(mean, std) or keras.layers.Normalization first in the classifier (eps stays "
        "in pixel units), or train with first_layer_centring='auto' (SEATModel's default), which trains that layer "
        "as if its input were centred and leaves the classifier's function as it is.")
    import warnings

    warnings.warn(message, UncenteredInputWarning, stacklevel=4)
    return message
